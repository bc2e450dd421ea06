/**
 * The length of a reply in words (runs of non-space), as the arena's length control and the
 * reward model's length term count it: one definition, so the two measure the same thing.
 */
export function replyWords(text: string): number {
  const t = text.trim();
  return t === '' ? 0 : t.split(/\s+/).length;
}
