/**
 * Ids and timestamps shared by both dialects.
 * Ids are ULIDs (26 Crockford base-32 characters, 48-bit millisecond time then 80 random bits),
 * made monotonic within a process so ids sort in creation order even inside one millisecond.
 */
import { randomBytes } from 'node:crypto';

const ALPHABET = '0123456789ABCDEFGHJKMNPQRSTVWXYZ';
let lastTime = -1;
const lastRandom = new Uint8Array(16); // one 5-bit digit per byte

function encodeTime(ms: number): string {
  let out = '';
  for (let i = 9; i >= 0; i--) {
    const mod = ms % 32;
    out = ALPHABET[mod]! + out;
    ms = (ms - mod) / 32;
  }
  return out;
}

function incrementRandom(): void {
  for (let i = 15; i >= 0; i--) {
    if (lastRandom[i]! < 31) {
      lastRandom[i]!++;
      return;
    }
    lastRandom[i] = 0;
  }
}

/** A new monotonic ULID, e.g. `01JDX3M8Q4T1V9R2K7Z5N6P0AB`. */
export function newId(now: number = Date.now()): string {
  if (now <= lastTime) {
    incrementRandom();
  } else {
    lastTime = now;
    const bytes = randomBytes(16);
    for (let i = 0; i < 16; i++) lastRandom[i] = bytes[i]! & 31;
  }
  let rand = '';
  for (let i = 0; i < 16; i++) rand += ALPHABET[lastRandom[i]!];
  return encodeTime(lastTime) + rand;
}

/** The current time as the store writes it: an ISO-8601 UTC string. */
export function nowIso(): string {
  return new Date().toISOString();
}
