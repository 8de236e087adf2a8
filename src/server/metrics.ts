/**
 * Prometheus metrics of one capture (prom-client), served at `GET /metrics`. Counters
 * and histograms are updated where things happen; gauges of changefeeds and spans are
 * computed when Prometheus scrapes, from the owner's coordinators and the agents.
 */
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import type { EventLoopDelay } from './event-loop-delay.ts';

/** What the scrape-time gauges read. */
export interface MetricsSources {
  /** Per changefeed coordinated here (owner only). */
  changefeeds(): Iterable<{
    readonly id: string;
    readonly checkpointTs: bigint;
    readonly resolvedTs: bigint;
    readonly checkpointLagMs: number | null;
    readonly resolvedLagMs: number | null;
    readonly spansByState: Readonly<Record<string, number>>;
    readonly movesInFlight: number;
    /** Splits and merges in flight. */
    readonly spanOperationsInFlight: number;
    readonly failingSpans: number;
    /** How long the watermark has been `stalled`; 0 when it is not. */
    readonly stalledForMs: number;
    /** The checkpoint lag of the slowest span as its capture last reported it; null while none is known. */
    readonly slowestSpanLagMs: number | null;
  }>;
  /** Spans held by this capture, per changefeed. */
  spansHeld(): ReadonlyMap<string, number>;
  /** Upstream watchers of this capture's sources, per changefeed (sources that tell). */
  sourceWatchers?(): ReadonlyMap<string, { readonly group: number; readonly catchUp: number }>;
  /** Bytes the buffers of this capture's sources hold, per changefeed (sources that tell). */
  sourceBufferedBytes?(): ReadonlyMap<string, number>;
  /** The event-loop delay over the last closed window (see event-loop-delay.ts). */
  eventLoopDelay?(): EventLoopDelay;
}

export class Metrics {
  readonly registry = new Registry();
  readonly sourceEvents: Counter<'changefeed'>;
  readonly sinkFlushSeconds: Histogram<'changefeed'>;
  readonly backfillKeysCopied: Counter<'changefeed'>;
  readonly quietChecks: Counter<'changefeed'>;
  readonly quietSpansMoved: Counter<'changefeed'>;
  readonly sinkFilesRetired: Counter<'changefeed'>;
  readonly ownerTickSeconds: Histogram;
  readonly elections: Counter;
  readonly fencedWriteRejections: Counter;
  readonly etcdErrors: Counter;
  readonly cannotProceedTicks: Counter<'changefeed' | 'reason'>;
  /** Splits and merges asked for and how they ended (owner only). */
  readonly spanOperations: Counter<'changefeed' | 'kind' | 'outcome'>;
  /** Event streams (SSE) this capture is serving; a client that leaves must bring it down. */
  readonly apiEventStreams: Gauge;
  /** Owner messages this capture's gRPC server dropped, by why (see README, security). */
  readonly rpcMessagesRefused: Counter<'reason'>;
  /** Adds this capture refused: outside the changefeed's tables, or over --rpc-capture-spans. */
  readonly rpcSpansRefused: Counter<'reason'>;
  /** gRPC connections and streams refused by the per-peer bounds. */
  readonly rpcStreamsRefused: Counter<'reason'>;

  constructor(sources: MetricsSources) {
    const registers = [this.registry];
    // The process's own figures (heap, RSS, CPU, GC, handles), as prom-client names them.
    collectDefaultMetrics({ register: this.registry });
    this.sourceEvents = new Counter({ name: 'spanfeed_source_events_total', help: 'Change events read from sources and written to sinks by this capture.', labelNames: ['changefeed'], registers });
    this.backfillKeysCopied = new Counter({ name: 'spanfeed_backfill_keys_copied_total', help: 'Keys this capture copied into sinks by backfills (rate() is the backfill speed).', labelNames: ['changefeed'], registers });
    this.quietChecks = new Counter({ name: 'spanfeed_pipeline_quiet_checks_total', help: 'Bulk checks of quiet spans this capture put to its sources (one call for up to --pipeline-quiet-batch spans).', labelNames: ['changefeed'], registers });
    this.quietSpansMoved = new Counter({ name: 'spanfeed_pipeline_quiet_spans_moved_total', help: 'Span checkpoints those checks moved on without a step (no events to write).', labelNames: ['changefeed'], registers });
    this.sinkFlushSeconds = new Histogram({
      name: 'spanfeed_sink_flush_duration_seconds',
      help: 'Time a sink took to make a batch durable.',
      labelNames: ['changefeed'],
      buckets: [0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5],
      registers,
    });
    this.sinkFilesRetired = new Counter({
      name: 'spanfeed_sink_files_retired_total',
      help: 'File sink files this capture deleted by retention (retainFiles, retainHours): closed and wholly at or below the checkpoint.',
      labelNames: ['changefeed'],
      registers,
    });
    this.ownerTickSeconds = new Histogram({
      name: 'spanfeed_owner_tick_duration_seconds',
      help: 'Time one owner tick took, over every changefeed.',
      buckets: [0.0001, 0.0005, 0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1],
      registers,
    });
    this.elections = new Counter({ name: 'spanfeed_owner_elections_total', help: 'Times this capture became owner.', registers });
    this.fencedWriteRejections = new Counter({ name: 'spanfeed_fenced_write_rejections_total', help: 'Owner writes etcd rejected because the owner was deposed.', registers });
    this.etcdErrors = new Counter({ name: 'spanfeed_etcd_errors_total', help: 'Failed etcd requests (reads, watches, writes).', registers });
    this.cannotProceedTicks = new Counter({
      name: 'spanfeed_changefeed_cannot_proceed_ticks_total',
      help: 'Owner ticks in which the watermark could not proceed, by reason.',
      labelNames: ['changefeed', 'reason'],
      registers,
    });
    this.spanOperations = new Counter({
      name: 'spanfeed_span_operations_total',
      help: 'Span splits and merges on this owner, by kind (split, merge; adopt: a new owner went on with a tiling the captures held) and outcome (started, refused: the request was answered 4xx/503 and nothing changed; done; aborted: given up before its commit, the old spans go on).',
      labelNames: ['changefeed', 'kind', 'outcome'],
      registers,
    });
    this.rpcMessagesRefused = new Counter({
      name: 'spanfeed_rpc_messages_refused_total',
      help: 'Owner messages this capture dropped: not from the owner in etcd (unverified-owner, forged-owner, stale-owner), malformed, too-many-spans, span-ids (a span id never defined on the stream), unknown-changefeed, or dropped by the agent (stale-seq, wrong-epoch, ...).',
      labelNames: ['reason'],
      registers,
    });
    this.rpcSpansRefused = new Counter({
      name: 'spanfeed_rpc_spans_refused_total',
      help: 'Span adds this capture refused without starting a pipeline: outside-tables (not inside a table of the changefeed in etcd) or capture-full (--rpc-capture-spans).',
      labelNames: ['reason'],
      registers,
    });
    this.rpcStreamsRefused = new Counter({
      name: 'spanfeed_rpc_streams_refused_total',
      help: 'gRPC connections and streams this capture refused: connections-per-peer, streams-per-peer, peer-name (a certificate without a name in --tls-allowed-names).',
      labelNames: ['reason'],
      registers,
    });
    this.apiEventStreams = new Gauge({ name: 'spanfeed_api_event_streams', help: 'Server-sent event streams this capture is producing (forwarded ones count on the owner).', registers });
    const changefeedGauge = (name: string, help: string, value: (c: ReturnType<MetricsSources['changefeeds']> extends Iterable<infer T> ? T : never) => number | undefined): void => {
      new Gauge({
        name,
        help,
        labelNames: ['changefeed'],
        registers,
        collect() {
          this.reset();
          for (const c of sources.changefeeds()) {
            const v = value(c);
            if (v !== undefined) this.set({ changefeed: c.id }, v);
          }
        },
      });
    };
    changefeedGauge('spanfeed_changefeed_checkpoint_ts', 'The changefeed checkpoint-ts (as a float: exact below 2^53).', (c) => Number(c.checkpointTs));
    changefeedGauge('spanfeed_changefeed_resolved_ts', 'The changefeed resolved-ts.', (c) => Number(c.resolvedTs));
    changefeedGauge('spanfeed_changefeed_checkpoint_lag_seconds', 'How far the checkpoint is behind: now minus its time (datagen), or since the resolved-ts reached it.', (c) =>
      c.checkpointLagMs === null ? undefined : c.checkpointLagMs / 1000,
    );
    changefeedGauge('spanfeed_changefeed_resolved_lag_seconds', 'How far the resolved-ts is behind: now minus its time (datagen), or since it last moved.', (c) =>
      c.resolvedLagMs === null ? undefined : c.resolvedLagMs / 1000,
    );
    changefeedGauge('spanfeed_changefeed_moves_in_flight', 'Span moves in flight.', (c) => c.movesInFlight);
    changefeedGauge('spanfeed_changefeed_span_operations_in_flight', 'Span splits and merges in flight (each holds the watermark while it runs).', (c) => c.spanOperationsInFlight);
    changefeedGauge('spanfeed_changefeed_stalled', '1 while the watermark is stalled: the checkpoint stands still behind the resolved-ts for --stall-after-ms; else 0.', (c) =>
      c.stalledForMs > 0 ? 1 : 0,
    );
    changefeedGauge('spanfeed_changefeed_stalled_seconds', 'How long the watermark has been stalled (the checkpoint behind the resolved-ts without moving); 0 when it is not.', (c) => c.stalledForMs / 1000);
    changefeedGauge('spanfeed_changefeed_slowest_span_lag_seconds', 'The checkpoint lag of the changefeed\'s slowest span, as its capture last reported it (GET .../spans/slowest).', (c) =>
      c.slowestSpanLagMs === null ? undefined : c.slowestSpanLagMs / 1000,
    );
    changefeedGauge('spanfeed_changefeed_failing_spans', 'Spans whose pipelines retry a failed step in place (a sink or source outage).', (c) => c.failingSpans);
    new Gauge({
      name: 'spanfeed_changefeed_spans',
      help: 'Spans of the changefeed by replication state.',
      labelNames: ['changefeed', 'state'],
      registers,
      collect() {
        this.reset();
        for (const c of sources.changefeeds()) for (const [state, n] of Object.entries(c.spansByState)) this.set({ changefeed: c.id, state }, n);
      },
    });
    const eventLoopDelay = sources.eventLoopDelay?.bind(sources);
    if (eventLoopDelay !== undefined) {
      new Gauge({
        name: 'spanfeed_event_loop_delay_seconds',
        help: 'How late the event loop ran (perf_hooks.monitorEventLoopDelay) over the last closed window (--event-loop-delay-window-ms, 10 s): quantile 0.5, 0.99 and 1 (the max). Lease keepalives run on this loop.',
        labelNames: ['quantile'],
        registers,
        collect() {
          const delay = eventLoopDelay();
          this.set({ quantile: '0.5' }, delay.p50Ms / 1000);
          this.set({ quantile: '0.99' }, delay.p99Ms / 1000);
          this.set({ quantile: '1' }, delay.maxMs / 1000);
        },
      });
    }
    new Gauge({
      name: 'spanfeed_capture_spans_held',
      help: 'Span pipelines running on this capture.',
      labelNames: ['changefeed'],
      registers,
      collect() {
        this.reset();
        for (const [changefeed, n] of sources.spansHeld()) this.set({ changefeed }, n);
      },
    });
    new Gauge({
      name: 'spanfeed_source_watchers',
      help: 'Upstream watchers this capture\'s sources hold (the etcd source): group, one shared by the spans of a table held here; catch-up, a private one bringing a span up to its group.',
      labelNames: ['changefeed', 'kind'],
      registers,
      collect() {
        this.reset();
        for (const [changefeed, watchers] of sources.sourceWatchers?.() ?? []) {
          this.set({ changefeed, kind: 'group' }, watchers.group);
          this.set({ changefeed, kind: 'catch-up' }, watchers.catchUp);
        }
      },
    });
    new Gauge({
      name: 'spanfeed_source_buffered_bytes',
      help: 'Bytes this capture\'s source buffers hold (the etcd source: keys, values and a fixed overhead per event, bounded per span by spanBufferBytesMax and in all by bufferBytesMax).',
      labelNames: ['changefeed'],
      registers,
      collect() {
        this.reset();
        for (const [changefeed, bytes] of sources.sourceBufferedBytes?.() ?? []) this.set({ changefeed }, bytes);
      },
    });
  }
}
