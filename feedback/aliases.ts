/**
 * The registry's alias names, in one place. `champion` is what users are served, `candidate` the
 * version offered to them head to head (the arena) or as a canary, `sft` the KL reference.
 */
export const ALIAS = { champion: 'champion', candidate: 'candidate', sft: 'sft' } as const;

/** One of the aliases the project moves. */
export type AliasName = (typeof ALIAS)[keyof typeof ALIAS];
