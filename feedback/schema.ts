/**
 * The feedback store's tables, as Kysely sees them, and the row aliases repository functions use.
 *
 * Conventions shared by both dialects (SQLite and PostgreSQL):
 * - ids are strings (monotonic ULIDs from `ids.ts`), so rows move between dialects unchanged;
 * - timestamps are ISO-8601 UTC strings (`2026-11-27T10:00:00.000Z`), which sort as time;
 * - booleans are integers 0/1; JSON values are stored as text in `*_json` columns.
 *
 * Judgement tables (thumbs, comparisons, rankings) keep every submission. `subject_key` names
 * what was judged by whom; exactly one row per subject has `current = 1` (the latest), older
 * ones stay as history.
 */
import type { Insertable, Selectable } from 'kysely';

export type Role = 'system' | 'user' | 'assistant';
export type FinishReason = 'stop' | 'length' | 'cancelled';
export type ThumbValue = 'up' | 'down';
export type ThumbReason = 'not_factual' | 'unhelpful' | 'unsafe' | 'too_long' | 'other';
export type Choice = 'a' | 'b' | 'tie' | 'both_bad';
export type ModelKind = 'policy' | 'reward';
/** 'reject' / 'clear': the alias was unset (see `clearAlias`). */
export type PromotionAction = 'promote' | 'rollback' | 'reject' | 'clear';
export type RunKind = 'pretrain' | 'sft' | 'reward' | 'ppo' | 'loop' | 'eval';
export type RunStatus = 'running' | 'succeeded' | 'failed' | 'cancelled';
export type JudgementKind = 'thumb' | 'comparison' | 'ranking';

export interface ConversationTable {
  id: string;
  user_id: string;
  session_id: string | null;
  title: string | null;
  created_at: string;
}

export interface MessageTable {
  id: string;
  conversation_id: string;
  /** The message this one answers or follows; siblings share it (regenerations, compared replies). */
  parent_id: string | null;
  role: Role;
  content: string;
  token_count: number | null;
  user_id: string | null;
  session_id: string | null;
  created_at: string;
}

export interface GenerationTable {
  /** The assistant message this generation produced (one generation per message). */
  message_id: string;
  model_version_id: string;
  /** Sampling parameters (temperature, topK, topP, maxTokens, …) as JSON text. */
  params_json: string;
  seed: number | null;
  finish_reason: FinishReason;
  prompt_tokens: number;
  completion_tokens: number;
  latency_ms: number;
  ttft_ms: number | null;
  created_at: string;
}

interface JudgementColumns {
  id: string;
  rater_id: string;
  session_id: string | null;
  comment: string | null;
  subject_key: string;
  current: number;
  created_at: string;
}

export interface ThumbTable extends JudgementColumns {
  message_id: string;
  value: ThumbValue;
  reason: ThumbReason | null;
}

export interface ComparisonTable extends JudgementColumns {
  context_id: string;
  a_id: string;
  b_id: string;
  choice: Choice;
}

export interface RankingTable extends JudgementColumns {
  context_id: string;
  k: number;
  not_rankable: number;
}

export interface RankingItemTable {
  ranking_id: string;
  /** 0 = most preferred. */
  position: number;
  message_id: string;
}

export interface IdempotencyKeyTable {
  /** JSON `[raterId, idempotencyKey]`. */
  key: string;
  kind: JudgementKind;
  judgement_id: string;
  payload_hash: string;
  created_at: string;
}

export interface ModelVersionTable {
  id: string;
  kind: ModelKind;
  parent_id: string | null;
  checkpoint: string;
  config_json: string;
  metrics_json: string;
  notes: string | null;
  created_at: string;
  /** Training stage that made it (`base`, `sft`, `reward`, `policy`); null for rows registered before it was recorded. */
  stage: string | null;
  /** sha256 (hex) of the weights file, verified again before the server serves it. */
  sha256: string | null;
  /** The training run that made it. */
  run_id: string | null;
}

export interface ModelAliasTable {
  alias: string;
  version_id: string;
  updated_at: string;
}

export interface PromotionLogTable {
  id: string;
  alias: string;
  from_version_id: string | null;
  to_version_id: string;
  action: PromotionAction;
  actor: string | null;
  reason: string | null;
  created_at: string;
  /** The target version's metrics (JSON) at the moment of the move. */
  metrics_json: string | null;
}

/** Shared registry settings (`canary_share`, `loop_paused`, …), one JSON value per key. */
export interface RegistrySettingTable {
  key: string;
  value_json: string;
  updated_at: string;
}

export interface TrainingRunTable {
  id: string;
  kind: RunKind;
  status: RunStatus;
  config_json: string;
  base_version_id: string | null;
  output_version_id: string | null;
  error: string | null;
  started_at: string;
  finished_at: string | null;
}

export interface RunMetricTable {
  run_id: string;
  step: number;
  name: string;
  value: number;
  created_at: string;
}

/** The whole store, for `Kysely<Database>`. */
export interface Database {
  conversations: ConversationTable;
  messages: MessageTable;
  generations: GenerationTable;
  thumbs: ThumbTable;
  comparisons: ComparisonTable;
  rankings: RankingTable;
  ranking_items: RankingItemTable;
  idempotency_keys: IdempotencyKeyTable;
  model_versions: ModelVersionTable;
  model_aliases: ModelAliasTable;
  promotion_log: PromotionLogTable;
  registry_settings: RegistrySettingTable;
  training_runs: TrainingRunTable;
  run_metrics: RunMetricTable;
}

export type Conversation = Selectable<ConversationTable>;
export type NewConversation = Insertable<ConversationTable>;
export type Message = Selectable<MessageTable>;
export type NewMessage = Insertable<MessageTable>;
export type Generation = Selectable<GenerationTable>;
export type NewGeneration = Insertable<GenerationTable>;
export type Thumb = Selectable<ThumbTable>;
export type NewThumb = Insertable<ThumbTable>;
export type Comparison = Selectable<ComparisonTable>;
export type NewComparison = Insertable<ComparisonTable>;
export type Ranking = Selectable<RankingTable>;
export type NewRanking = Insertable<RankingTable>;
export type RankingItem = Selectable<RankingItemTable>;
export type ModelVersion = Selectable<ModelVersionTable>;
export type NewModelVersion = Insertable<ModelVersionTable>;
export type ModelAlias = Selectable<ModelAliasTable>;
export type PromotionLogEntry = Selectable<PromotionLogTable>;
export type RegistrySetting = Selectable<RegistrySettingTable>;
export type TrainingRun = Selectable<TrainingRunTable>;
export type NewTrainingRun = Insertable<TrainingRunTable>;
export type RunMetric = Selectable<RunMetricTable>;

/** Which database a store runs on. */
export type DialectName = 'sqlite' | 'postgres';
