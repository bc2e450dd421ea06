/**
 * The names of the reward covariates and the sets the loop offers, apart from their code
 * (reward-covariates.ts) so a configuration can name them without loading a model.
 */
export const COVARIATES = ['length', 'likelihood', 'relevance', 'tail', 'echo'] as const;
export type Covariate = (typeof COVARIATES)[number];
/** λ per covariate (absent or 0 = not in the score). */
export type CovariateCoefs = Partial<Record<Covariate, number>>;

/** The covariate sets the loop offers (`--reward-covariates`). */
export const COVARIATE_SETS = ['none', 'length', 'length+likelihood', 'length+likelihood+relevance', 'length+likelihood+tail', 'length+likelihood+echo', 'length+echo'] as const;
export type CovariateSet = (typeof COVARIATE_SETS)[number];

/** The covariates of `set`. */
export function covariatesOf(set: CovariateSet): Covariate[] {
  return set === 'none' ? [] : (set.split('+') as Covariate[]);
}

/** Whether scoring with these λ reads the reference policy. */
export function needsReference(coefs: CovariateCoefs): boolean {
  return Boolean(coefs.likelihood || coefs.relevance || coefs.tail);
}
