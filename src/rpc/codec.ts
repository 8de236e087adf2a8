/**
 * Core messages <-> protobuf objects. Decoding validates everything that comes from the
 * network and throws a {@link ProtocolError} naming the bad field.
 */
import type {
  AgentSpanState,
  CaptureWatermark,
  MessageHeader,
  OwnerMessage,
  PipelinesFailing,
  ProgressReport,
  ReportMessage,
  SpanProgress,
  SpanStatus,
} from '../core/messages.ts';
import { splitKeyCharsMax } from '../core/messages.ts';
import type { Span } from '../core/span.ts';
import type { SpanDigest } from '../core/span-digest.ts';
import type { SpanIdDecoder, SpanIdEncoder } from './span-ids.ts';
import { SpanIdError } from './span-ids.ts';

/**
 * A malformed message from the network, one past a bound (`too-many-spans`), or one
 * naming a span id the stream never defined (`span-ids`).
 */
export class ProtocolError extends Error {
  override readonly name = 'ProtocolError';
  readonly retryable = false;

  constructor(
    message: string,
    readonly reason: 'malformed' | 'too-many-spans' | 'span-ids' = 'malformed',
  ) {
    super(message);
  }
}

/** Bounds checked while decoding, before any list is walked. */
export interface DecodeLimits {
  /** Spans in one owner message: adds + removes of a dispatch, or a heartbeat's spans. */
  readonly spansPerMessageMax: number;
}

const unbounded: DecodeLimits = { spansPerMessageMax: Number.POSITIVE_INFINITY };

function bounded(count: number, limits: DecodeLimits, field: string): void {
  if (count > limits.spansPerMessageMax) throw new ProtocolError(`${field} has ${count} spans, more than ${limits.spansPerMessageMax}`, 'too-many-spans');
}

const states: Record<AgentSpanState, string> = {
  absent: 'AGENT_SPAN_STATE_ABSENT',
  preparing: 'AGENT_SPAN_STATE_PREPARING',
  prepared: 'AGENT_SPAN_STATE_PREPARED',
  replicating: 'AGENT_SPAN_STATE_REPLICATING',
  stopping: 'AGENT_SPAN_STATE_STOPPING',
  stopped: 'AGENT_SPAN_STATE_STOPPED',
};
const statesByName = new Map(Object.entries(states).map(([k, v]) => [v, k as AgentSpanState]));

type Obj = Record<string, unknown>;

function obj(value: unknown, field: string): Obj {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) throw new ProtocolError(`${field} is missing`);
  return value as Obj;
}

const uint64Max = (1n << 64n) - 1n;

function u64(value: unknown, field: string): bigint {
  if (typeof value === 'number' && Number.isSafeInteger(value) && value >= 0) return BigInt(value);
  if (typeof value !== 'string' || !/^\d{1,20}$/.test(value)) throw new ProtocolError(`${field} is not an unsigned 64-bit integer`);
  const n = BigInt(value);
  if (n > uint64Max) throw new ProtocolError(`${field} is not an unsigned 64-bit integer`);
  return n;
}

function num(value: unknown, field: string): number {
  const n = u64(value, field);
  if (n > BigInt(Number.MAX_SAFE_INTEGER)) throw new ProtocolError(`${field} is too large`);
  return Number(n);
}

function str(value: unknown, field: string): string {
  if (typeof value !== 'string') throw new ProtocolError(`${field} is not a string`);
  return value;
}

function bytes(value: unknown, field: string): string {
  if (Buffer.isBuffer(value)) return value.toString('latin1');
  if (value instanceof Uint8Array) return Buffer.from(value).toString('latin1');
  throw new ProtocolError(`${field} is not bytes`);
}

function list(value: unknown, field: string): unknown[] {
  if (!Array.isArray(value)) throw new ProtocolError(`${field} is not a list`);
  return value;
}

/**
 * A span in full, or by its id when the stream's receiver knows it (see span-ids.ts);
 * spans are encoded and decoded in the same order, so ids are defined in that order.
 */
function encodeSpan(span: Span, ids: SpanIdEncoder | undefined): Obj {
  const named = ids?.idOf(span);
  if (named?.known === true) return { id: named.id };
  const full: Obj = { table: span.table, start: Buffer.from(span.start, 'latin1'), end: Buffer.from(span.end, 'latin1') };
  return named === undefined || named.id === 0 ? full : { ...full, id: named.id };
}

function decodeSpan(value: unknown, field: string, ids: SpanIdDecoder | undefined): Span {
  const o = obj(value, field);
  const table = o.table === undefined || o.table === null ? '' : str(o.table, `${field}.table`);
  const id = o.id === undefined || o.id === null ? 0 : o.id;
  if (typeof id !== 'number' || !Number.isInteger(id) || id < 0) throw new ProtocolError(`${field}.id is not a uint32`);
  try {
    if (table.length === 0) {
      if (id === 0) throw new ProtocolError(`${field}.table is empty`);
      if (ids === undefined) throw new ProtocolError(`${field} names span id ${id} on a stream without span ids`);
      return ids.spanOf(id);
    }
    const span: Span = { table, start: bytes(o.start, `${field}.start`), end: bytes(o.end, `${field}.end`) };
    if (id !== 0) ids?.define(id, span);
    return span;
  } catch (error) {
    if (error instanceof SpanIdError) throw new ProtocolError(`${field}: ${error.message}`, 'span-ids');
    throw error;
  }
}

/** A decoded header; a sender whose dictionary started over says so before any span. */
function decodeHeaderOf(o: Obj, ids: SpanIdDecoder | undefined): MessageHeader {
  const header = decodeHeader(o.header);
  const reset = obj(o.header, 'header').spanIdsReset;
  if (reset !== undefined && reset !== null && typeof reset !== 'boolean') throw new ProtocolError('header.spanIdsReset is not a boolean');
  if (reset === true) ids?.reset();
  return header;
}

const encodeHeader = (h: MessageHeader, ids: SpanIdEncoder | undefined): Obj => ({
  spanIdsReset: ids?.beginMessage() ?? false,
  changefeed: h.changefeed,
  ownerRevision: h.ownerRevision.toString(),
  changefeedEpoch: h.changefeedEpoch.toString(),
  captureEpoch: h.captureEpoch.toString(),
  from: h.from,
  to: h.to,
  seq: String(h.seq),
  ackSeq: String(h.ackSeq),
});

function decodeHeader(value: unknown): MessageHeader {
  const o = obj(value, 'header');
  return {
    changefeed: str(o.changefeed, 'header.changefeed'),
    ownerRevision: u64(o.ownerRevision, 'header.ownerRevision'),
    changefeedEpoch: u64(o.changefeedEpoch, 'header.changefeedEpoch'),
    captureEpoch: u64(o.captureEpoch, 'header.captureEpoch'),
    from: str(o.from, 'header.from'),
    to: str(o.to, 'header.to'),
    seq: num(o.seq, 'header.seq'),
    ackSeq: num(o.ackSeq, 'header.ackSeq'),
  };
}

const encodeDigest = (d: SpanDigest): Obj => ({ count: d.count, hashA: d.hashA, hashB: d.hashB });

function decodeDigest(value: unknown, field: string): SpanDigest {
  const o = obj(value, field);
  const n = (v: unknown, f: string): number => {
    if (typeof v !== 'number' || !Number.isInteger(v) || v < 0 || v > 0xffffffff) throw new ProtocolError(`${field}.${f} is not a uint32`);
    return v;
  };
  return { count: n(o.count, 'count'), hashA: n(o.hashA, 'hashA'), hashB: n(o.hashB, 'hashB') };
}

/** Encodes an owner message as the proto `OwnerMessage`. */
export function encodeOwnerMessage(message: OwnerMessage, ids?: SpanIdEncoder): Obj {
  if (message.kind === 'dispatch') {
    return {
      dispatch: {
        header: encodeHeader(message.header, ids),
        adds: message.adds.map((a) => ({ span: encodeSpan(a.span, ids), secondary: a.secondary, checkpointTs: a.checkpointTs.toString() })),
        removes: message.removes.map((span) => encodeSpan(span, ids)),
      },
    };
  }
  return {
    heartbeat: {
      header: encodeHeader(message.header, ids),
      spans: message.spans.map((span) => encodeSpan(span, ids)),
      spansComplete: message.spansComplete,
      primaryDigest: encodeDigest(message.primaryDigest),
      draining: message.draining,
      barrierTs: message.barrierTs.toString(),
      collectId: String(message.collectId),
    },
  };
}

/**
 * Decodes and validates a proto `OwnerMessage`; a message past `limits` is refused whole.
 * With `ids` (one per stream), spans may come by id.
 */
export function decodeOwnerMessage(value: unknown, limits: DecodeLimits = unbounded, ids?: SpanIdDecoder): OwnerMessage {
  const o = obj(value, 'message');
  if (o.dispatch !== undefined && o.dispatch !== null) {
    const d = obj(o.dispatch, 'dispatch');
    const adds = list(d.adds, 'dispatch.adds');
    const removes = list(d.removes, 'dispatch.removes');
    bounded(adds.length + removes.length, limits, 'dispatch');
    const header = decodeHeaderOf(d, ids);
    return {
      kind: 'dispatch',
      header,
      adds: adds.map((raw, i) => {
        const a = obj(raw, `adds[${i}]`);
        if (typeof a.secondary !== 'boolean') throw new ProtocolError(`adds[${i}].secondary is not a boolean`);
        return { span: decodeSpan(a.span, `adds[${i}].span`, ids), secondary: a.secondary, checkpointTs: u64(a.checkpointTs, `adds[${i}].checkpointTs`) };
      }),
      removes: removes.map((raw, i) => decodeSpan(raw, `removes[${i}]`, ids)),
    };
  }
  if (o.heartbeat !== undefined && o.heartbeat !== null) {
    const h = obj(o.heartbeat, 'heartbeat');
    if (typeof h.spansComplete !== 'boolean' || typeof h.draining !== 'boolean') throw new ProtocolError('heartbeat flags are not booleans');
    const spans = list(h.spans, 'heartbeat.spans');
    bounded(spans.length, limits, 'heartbeat');
    const header = decodeHeaderOf(h, ids);
    return {
      kind: 'heartbeat',
      header,
      spans: spans.map((raw, i) => decodeSpan(raw, `spans[${i}]`, ids)),
      spansComplete: h.spansComplete,
      primaryDigest: decodeDigest(h.primaryDigest, 'heartbeat.primaryDigest'),
      draining: h.draining,
      barrierTs: u64(h.barrierTs, 'heartbeat.barrierTs'),
      collectId: num(h.collectId, 'heartbeat.collectId'),
    };
  }
  throw new ProtocolError('message has neither dispatch nor heartbeat');
}

const encodeStatus = (s: SpanStatus, ids: SpanIdEncoder | undefined): Obj => ({
  span: encodeSpan(s.span, ids),
  state: states[s.state],
  checkpointTs: s.checkpointTs.toString(),
  resolvedTs: s.resolvedTs.toString(),
  fatalError: s.fatalError ?? '',
});

function decodeStatus(value: unknown, field: string, ids: SpanIdDecoder | undefined): SpanStatus {
  const o = obj(value, field);
  const state = statesByName.get(str(o.state, `${field}.state`));
  if (state === undefined) throw new ProtocolError(`${field}.state ${JSON.stringify(o.state)} is not a span state`);
  const status: SpanStatus = { span: decodeSpan(o.span, `${field}.span`, ids), state, checkpointTs: u64(o.checkpointTs, `${field}.checkpointTs`), resolvedTs: u64(o.resolvedTs, `${field}.resolvedTs`) };
  if (o.fatalError === undefined || o.fatalError === null || o.fatalError === '') return status;
  return { ...status, fatalError: str(o.fatalError, `${field}.fatalError`).slice(0, 4096) };
}

/** Encodes a report as the proto `CaptureMessage`. */
export function encodeCaptureMessage(report: ReportMessage, ids?: SpanIdEncoder): Obj {
  const w = report.watermark;
  return {
    report: {
      header: encodeHeader(report.header, ids),
      statuses: report.statuses.map((s) => encodeStatus(s, ids)),
      watermark: { checkpointTs: w.checkpointTs.toString(), resolvedTs: w.resolvedTs.toString(), digest: encodeDigest(w.digest) },
      liveness: report.liveness === 'stopping' ? 'LIVENESS_STOPPING' : 'LIVENESS_ALIVE',
      ...(report.collect === undefined ? {} : { collect: { id: String(report.collect.id), part: report.collect.part, parts: report.collect.parts } }),
      ...(report.failing === undefined ? {} : { failingSpans: report.failing.spans, failingError: report.failing.error }),
      ...(report.progress === undefined ? {} : { hasProgress: true, slowest: report.progress.slowest.map((p) => encodeProgress(p, ids)), progressSlice: report.progress.slice.map((p) => encodeProgress(p, ids)) }),
    },
  };
}

const encodeProgress = (p: SpanProgress, ids: SpanIdEncoder | undefined): Obj => ({
  span: encodeSpan(p.span, ids),
  checkpointTs: p.checkpointTs.toString(),
  resolvedTs: p.resolvedTs.toString(),
  eventsPerSecond: Math.max(0, Math.min(0xffffffff, Math.round(p.eventsPerSecond))),
  ...(p.bytesPerSecond === undefined ? {} : { hasBytesPerSecond: true, bytesPerSecond: String(Math.max(0, Math.min(Number.MAX_SAFE_INTEGER, Math.round(p.bytesPerSecond)))) }),
  ...(p.splitKey === undefined ? {} : { splitKey: Buffer.from(p.splitKey, 'latin1'), sampleKeys: Math.max(0, Math.min(0xffffffff, p.sampleKeys ?? 0)) }),
});

/**
 * A progress entry's split key: absent when empty; refused when longer than
 * {@link splitKeyCharsMax} or not strictly inside the span (a capture only names keys
 * its span wrote, after its start).
 */
function decodeSplitKey(o: Obj, span: Span, field: string): { splitKey?: string; sampleKeys?: number } {
  if (o.splitKey === undefined || o.splitKey === null) return {};
  const key = bytes(o.splitKey, `${field}.splitKey`);
  if (key.length === 0) return {};
  if (key.length > splitKeyCharsMax) throw new ProtocolError(`${field}.splitKey is ${key.length} bytes, more than ${splitKeyCharsMax}`);
  if (!(key > span.start) || (span.end !== '' && !(key < span.end))) throw new ProtocolError(`${field}.splitKey is not strictly inside its span`);
  const sampleKeys = o.sampleKeys === undefined || o.sampleKeys === null ? 0 : num(o.sampleKeys, `${field}.sampleKeys`);
  return { splitKey: key, sampleKeys };
}

/**
 * Progress entries one report may carry (a capture sends at most `--progress-slowest`
 * plus `--progress-slice`, which the flags keep below this); a report with more is
 * refused.
 */
export const progressEntriesPerReportMax = 8_192;

/** The report's per-span progress, absent when it has none. */
function decodeProgress(r: Obj, ids: SpanIdDecoder | undefined): { progress?: ProgressReport } {
  if (r.hasProgress !== true) return {};
  const slowest = list(r.slowest ?? [], 'report.slowest');
  const slice = list(r.progressSlice ?? [], 'report.progressSlice');
  if (slowest.length + slice.length > progressEntriesPerReportMax) {
    throw new ProtocolError(`report has ${slowest.length + slice.length} progress entries, more than ${progressEntriesPerReportMax}`, 'too-many-spans');
  }
  const one = (raw: unknown, field: string): SpanProgress => {
    const o = obj(raw, field);
    const span = decodeSpan(o.span, `${field}.span`, ids);
    if (o.hasBytesPerSecond !== undefined && o.hasBytesPerSecond !== null && typeof o.hasBytesPerSecond !== 'boolean') throw new ProtocolError(`${field}.hasBytesPerSecond is not a boolean`);
    return {
      span,
      checkpointTs: u64(o.checkpointTs, `${field}.checkpointTs`),
      resolvedTs: u64(o.resolvedTs, `${field}.resolvedTs`),
      eventsPerSecond: o.eventsPerSecond === undefined || o.eventsPerSecond === null ? 0 : num(o.eventsPerSecond, `${field}.eventsPerSecond`),
      ...(o.hasBytesPerSecond === true ? { bytesPerSecond: num(o.bytesPerSecond ?? 0, `${field}.bytesPerSecond`) } : {}),
      ...decodeSplitKey(o, span, field),
    };
  };
  return { progress: { slowest: slowest.map((raw, i) => one(raw, `slowest[${i}]`)), slice: slice.map((raw, i) => one(raw, `progressSlice[${i}]`)) } };
}

/** The report's failing pipelines, absent when none. */
function decodeFailing(r: Obj): { failing?: PipelinesFailing } {
  const spans = r.failingSpans === undefined || r.failingSpans === null ? 0 : num(r.failingSpans, 'report.failingSpans');
  if (spans === 0) return {};
  const error = r.failingError === undefined || r.failingError === null ? '' : str(r.failingError, 'report.failingError');
  return { failing: { spans, error: error.slice(0, 4096) } };
}

/** Decodes and validates a proto `CaptureMessage`; with `ids` (one per stream), spans may come by id. */
export function decodeCaptureMessage(value: unknown, ids?: SpanIdDecoder): ReportMessage {
  const r = obj(obj(value, 'message').report, 'report');
  const header = decodeHeaderOf(r, ids);
  const w = obj(r.watermark, 'report.watermark');
  const watermark: CaptureWatermark = {
    checkpointTs: u64(w.checkpointTs, 'watermark.checkpointTs'),
    resolvedTs: u64(w.resolvedTs, 'watermark.resolvedTs'),
    digest: decodeDigest(w.digest, 'watermark.digest'),
  };
  if (r.liveness !== 'LIVENESS_ALIVE' && r.liveness !== 'LIVENESS_STOPPING') throw new ProtocolError(`report.liveness ${JSON.stringify(r.liveness)} is not valid`);
  const base = {
    kind: 'report' as const,
    header,
    statuses: list(r.statuses, 'report.statuses').map((raw, i) => decodeStatus(raw, `statuses[${i}]`, ids)),
    watermark,
    liveness: r.liveness === 'LIVENESS_STOPPING' ? ('stopping' as const) : ('alive' as const),
    ...decodeFailing(r),
    ...decodeProgress(r, ids),
  };
  if (r.collect === undefined || r.collect === null) return base;
  const c = obj(r.collect, 'report.collect');
  const id = num(c.id, 'collect.id');
  if (id === 0) return base;
  const part = c.part;
  const parts = c.parts;
  if (typeof part !== 'number' || typeof parts !== 'number' || parts < 1 || part >= parts) throw new ProtocolError('report.collect part is out of range');
  return { ...base, collect: { id, part, parts } };
}
