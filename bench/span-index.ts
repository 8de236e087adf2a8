/**
 * The incremental span structures of issue 11, in one process, no I/O: the agent's
 * watermark (a progress event of its own ts plus a watermark read per event, on an agent
 * replicating N spans; and the quiet case, 4,096 spans moved to one ts in one call, then
 * one read) and the owner's span order (the first read after N creations, a page of 1,000,
 * a creation then a page). Prints JSON.
 *
 * `npm run bench:span-index -- --spans 100000` (default 100,000).
 */
import { Agent } from '../src/agent/agent.ts';
import type { Span } from '../src/core/span.ts';
import { spanKey } from '../src/core/span.ts';
import { SpanOrder } from '../src/core/span-order.ts';

const flag = process.argv.indexOf('--spans');
const spans = flag >= 0 ? Number(process.argv[flag + 1]) : 100_000;
if (!Number.isSafeInteger(spans) || spans < 1 || spans > 1_000_000) throw new Error('--spans must be an integer from 1 to 1000000');

const list: Span[] = Array.from({ length: spans }, (_, i) => ({ table: 't', start: `k${String(i).padStart(7, '0')}`, end: `k${String(i + 1).padStart(7, '0')}` }));

const agent = new Agent({ captureId: 'cap', captureEpoch: 1n, changefeed: 'cf', changefeedEpoch: 1n, statusesPerMessageMax: 1_024 });
agent.observeOwner('owner', 5n);
let seq = 0;
const header = () => ({ changefeed: 'cf', ownerRevision: 5n, changefeedEpoch: 1n, captureEpoch: 0n, from: 'owner', to: 'cap', seq: ++seq, ackSeq: 0 });
for (let i = 0; i < spans; i += 1_000) {
  agent.handleMessage({ kind: 'dispatch', header: header(), adds: list.slice(i, i + 1_000).map((span) => ({ span, secondary: false, checkpointTs: 100n })), removes: [] });
}
for (const span of list) agent.handlePipelineEvent({ kind: 'prepared', key: spanKey(span), resolvedTs: 100n });
agent.flush();
const events = 200_000;
let started = performance.now();
for (let i = 0; i < events; i++) {
  const span = list[(i * 7_919) % spans] as Span;
  agent.handlePipelineEvent({ kind: 'progress', key: spanKey(span), checkpointTs: BigInt(100 + i), resolvedTs: BigInt(200 + i) });
  agent.watermark();
}
const watermarkUsPerEvent = ((performance.now() - started) * 1_000) / events;

// The quiet case: a bulk check moves 4,096 spans to the one ts it answered, in one call,
// then the report reads the watermark once.
const keys = list.map(spanKey);
const batch = 4_096;
// Every span moved several times: the first moves empty the buckets the events above left
// (one per span); what counts is the steady state after.
const rounds = Math.max(1, Math.ceil((6 * spans) / batch));
let cursor = 0;
started = performance.now();
for (let r = 0; r < rounds; r++) {
  const ts = BigInt(1_000_000 + r);
  const moved = [];
  for (let j = 0; j < batch; j++, cursor = (cursor + 1) % spans) moved.push({ kind: 'progress', key: keys[cursor] as string, checkpointTs: ts, resolvedTs: ts } as const);
  agent.handlePipelineEvents(moved);
  agent.watermark();
}
const quietBatchUsPerSpan = ((performance.now() - started) * 1_000) / (rounds * batch);

const order = new SpanOrder<{ span: Span }>();
started = performance.now();
for (const span of list) order.add({ span });
order.page({ limit: 1, scanMax: 1 });
const firstReadMs = performance.now() - started;
started = performance.now();
let after: Span | undefined;
let pages = 0;
for (;;) {
  const page = order.page({ after, limit: 1_000, scanMax: 100_000 });
  pages++;
  if (page.next === undefined) break;
  after = page.next;
}
const pageMs = (performance.now() - started) / pages;
started = performance.now();
for (let i = 0; i < 100; i++) {
  order.add({ span: { table: 't', start: `k${i}x`, end: `k${i}y` } });
  order.page({ limit: 1_000, scanMax: 100_000 });
}
const addThenPageMs = (performance.now() - started) / 100;

const round = (n: number): number => Math.round(n * 1_000) / 1_000;
console.log(JSON.stringify({ spans, watermarkUsPerEvent: round(watermarkUsPerEvent), quietBatchUsPerSpan: round(quietBatchUsPerSpan), spanOrderFirstReadMs: round(firstReadMs), spanPageMs: round(pageMs), addThenPageMs: round(addThenPageMs) }));
