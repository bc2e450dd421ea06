/**
 * Prometheus metrics of one server instance (its own registry, so tests can run several).
 * Tokens per second is `rate(chat_generated_tokens_total[1m])`; `chat_decode_tokens_per_second`
 * is the same figure measured over the last decode steps, for a glance without PromQL.
 */
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import type { FeedbackStore } from '../feedback/open-store.ts';

export class ServerMetrics {
  readonly registry = new Registry();
  readonly ttft = new Histogram({
    name: 'chat_time_to_first_token_seconds',
    help: 'Time from a request being accepted to its first token',
    buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
    labelNames: ['source'] as const,
    registers: [this.registry],
  });
  readonly tokens = new Counter({ name: 'chat_generated_tokens_total', help: 'Tokens generated', registers: [this.registry] });
  readonly tokensPerSecond = new Gauge({ name: 'chat_decode_tokens_per_second', help: 'Tokens per second over the recent decode steps', registers: [this.registry] });
  readonly stepSeconds = new Histogram({
    name: 'chat_decode_step_seconds',
    help: 'Duration of one batched decode step',
    buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25],
    registers: [this.registry],
  });
  readonly batchSize = new Gauge({ name: 'chat_batch_size', help: 'Sequences in the last decode step', registers: [this.registry] });
  readonly queueDepth = new Gauge({ name: 'chat_queue_depth', help: 'Requests waiting for a batch slot', registers: [this.registry] });
  readonly activeSequences = new Gauge({ name: 'chat_active_sequences', help: 'Replies being decoded', registers: [this.registry] });
  readonly activeConversations = new Gauge({ name: 'chat_active_conversations', help: 'Conversations with live state in memory', registers: [this.registry] });
  readonly sessionBytes = new Gauge({ name: 'chat_session_cache_bytes', help: 'Bytes of live conversation state (KV caches included)', registers: [this.registry] });
  readonly sockets = new Gauge({ name: 'chat_websocket_connections', help: 'Open WebSocket connections', registers: [this.registry] });
  readonly requests = new Counter({ name: 'chat_requests_total', help: 'Generation requests accepted', labelNames: ['source'] as const, registers: [this.registry] });
  readonly errors = new Counter({ name: 'chat_errors_total', help: 'Errors sent to clients, by stable code', labelNames: ['code'] as const, registers: [this.registry] });
  readonly modelInfo = new Gauge({ name: 'chat_model_info', help: 'The model version served (value 1)', labelNames: ['version'] as const, registers: [this.registry] });

  constructor(opts: { defaultMetrics?: boolean } = {}) {
    if (opts.defaultMetrics) collectDefaultMetrics({ register: this.registry });
  }

  /** Gauges read from the store at each scrape: health, judgement queue, retries, checkpointer restarts. */
  watchStore(store: FeedbackStore): void {
    const gauge = (name: string, help: string, value: () => number) =>
      new Gauge({ name, help, registers: [this.registry], collect() { this.set(value()); } });
    gauge('store_up', 'Whether the feedback store answers (1) or is degraded (0)', () => (store.health.state().state === 'ok' ? 1 : 0));
    gauge('store_judgement_queue_depth', 'Judgements waiting to be committed', () => store.writer.pending);
    gauge('store_judgement_retries_total', 'Judgement batches retried because the store was unreachable', () => store.writer.stats.retries);
    gauge('store_judgements_refused_total', 'Judgements refused because the queue was full', () => store.writer.stats.refused);
    gauge('store_wal_checkpointer_restarts_total', 'Times the SQLite WAL checkpointer thread died and was restarted', () => store.checkpointer?.restarts ?? 0);
  }

  setModel(version: string): void {
    this.modelInfo.reset();
    this.modelInfo.set({ version }, 1);
  }
}
