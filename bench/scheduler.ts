/**
 * Scheduler benchmark: one coordinator scheduling N spans over C simulated captures that
 * answer instantly (the real pure agent, with pipelines that prepare, flush and stop at
 * once). Messages are structured-cloned between owner and captures, as a network would
 * copy them, so the owner's heap holds only what the owner keeps.
 *
 *   npm run bench:scheduler -- --spans N --captures C [--ticks T] [--moves-in-flight M]
 *
 * Prints one JSON line:
 *   placementTicks    ticks until every span is replicating
 *   tickMsMedian/P99  steady-state coordinator tick (all replicating, checkpoints rising)
 *   heapBytesPerSpan  heap retained by the coordinator alone, per span
 *   drainTicks/Ms     draining one capture until it holds nothing
 */
import { parseArgs } from 'node:util';
import { performance } from 'node:perf_hooks';
import { Agent } from '../src/agent/agent.ts';
import type { PipelineCommand, PipelineEvent } from '../src/agent/pipeline.ts';
import { Coordinator } from '../src/core/coordinator.ts';
import type { OwnerMessage, ReportMessage } from '../src/core/messages.ts';
import type { Span, TableRange } from '../src/core/span.ts';
import { splitTable } from '../src/core/span.ts';

const spansPerTable = 100;

interface BenchCapture {
  readonly agent: Agent;
  /** Spans this capture writes, with the position it has flushed. */
  readonly writing: Map<string, bigint>;
}

function parsePositive(name: string, value: string | undefined, fallback: number): number {
  if (value === undefined) return fallback;
  const n = Number(value);
  if (!Number.isSafeInteger(n) || n < 1) throw new Error(`--${name} must be a positive integer, got ${JSON.stringify(value)}`);
  return n;
}

function gcHeap(): number {
  const gc = (globalThis as { gc?: () => void }).gc;
  if (gc === undefined) throw new Error('run with node --expose-gc (npm run bench:scheduler does)');
  for (let i = 0; i < 3; i++) gc();
  return process.memoryUsage().heapUsed;
}

function makeTables(spanCount: number): { tables: TableRange[]; spans: Span[] } {
  const tables: TableRange[] = [];
  const spans: Span[] = [];
  for (let t = 0; spans.length < spanCount; t++) {
    const table: TableRange = { name: `table${t}`, start: '', end: '' };
    const count = Math.min(spansPerTable, spanCount - spans.length);
    const boundaries: string[] = [];
    for (let i = 1; i < count; i++) boundaries.push(`k${String(i).padStart(4, '0')}`);
    tables.push(table);
    spans.push(...splitTable(table, boundaries));
  }
  return { tables, spans };
}

function percentile(sorted: readonly number[], p: number): number {
  if (sorted.length === 0) return 0;
  const index = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[index] ?? 0;
}

const round = (n: number): number => Math.round(n * 1000) / 1000;

function main(): void {
  const { values } = parseArgs({
    options: {
      spans: { type: 'string' },
      captures: { type: 'string' },
      ticks: { type: 'string' },
      'moves-in-flight': { type: 'string' },
    },
    strict: true,
  });
  const spanCount = parsePositive('spans', values.spans, 10_000);
  const captureCount = parsePositive('captures', values.captures, 10);
  const steadyTicks = parsePositive('ticks', values.ticks, 100);
  const movesInFlight = values['moves-in-flight'] === undefined ? undefined : parsePositive('moves-in-flight', values['moves-in-flight'], 10);

  const heapBefore = gcHeap();
  const holder: { coordinator: Coordinator | undefined; agents: unknown } = { coordinator: undefined, agents: undefined };
  const results = runPhases(holder, spanCount, captureCount, steadyTicks, movesInFlight);

  // Memory retained by the coordinator: the heap with it, minus the heap once it is
  // dropped. Measured here, outside the frame that used it, so no stale reference stays.
  const heapWithOwner = gcHeap();
  holder.coordinator = undefined;
  const heapWithoutOwner = gcHeap();
  const heapBytesPerSpan = (heapWithOwner - heapWithoutOwner) / spanCount;

  process.stdout.write(
    `${JSON.stringify({
      ...results,
      heapBytesPerSpan: Math.round(heapBytesPerSpan),
      heapOwnerMiB: Math.round((heapWithOwner - heapWithoutOwner) / 1048576),
      heapTotalMiB: Math.round((heapWithOwner - heapBefore) / 1048576),
    })}\n`,
  );
}

/** Placement, steady state and drain; the coordinator lives in `holder` only. */
function runPhases(
  holder: { coordinator: Coordinator | undefined; agents: unknown },
  spanCount: number,
  captureCount: number,
  steadyTicks: number,
  movesInFlight: number | undefined,
): Record<string, unknown> {
  const coordinator = new Coordinator({
    changefeed: 'bench',
    changefeedEpoch: 1n,
    ownerId: 'c0',
    ownerRevision: 1n,
    checkpointTs: 1n,
    seed: 42,
    limits: movesInFlight === undefined ? {} : { moveTasksInFlightMax: movesInFlight },
  });
  {
    const { tables, spans } = makeTables(spanCount);
    coordinator.setSpans(tables, spans);
  }

  holder.coordinator = coordinator;
  const captures = new Map<string, BenchCapture>();
  holder.agents = captures;
  for (let i = 0; i < captureCount; i++) {
    const id = `c${i}`;
    captures.set(id, {
      agent: new Agent({ captureId: id, captureEpoch: BigInt(i + 1), changefeed: 'bench', changefeedEpoch: 1n, statusesPerMessageMax: 1024 }),
      writing: new Map(),
    });
  }
  const captureIds = [...captures.keys()];
  let upstreamTs = 1n;
  let inbox: ReportMessage[] = [];

  // Pipelines that answer at once: prepared as soon as asked, stopped as soon as told.
  const runCommands = (capture: BenchCapture, commands: readonly PipelineCommand[]): void => {
    const queue = [...commands];
    while (queue.length > 0) {
      const command = queue.shift() as PipelineCommand;
      let event: PipelineEvent | undefined;
      switch (command.kind) {
        case 'prepare':
          event = { kind: 'prepared', key: command.key, resolvedTs: upstreamTs };
          break;
        case 'promote':
          capture.writing.set(command.key, command.checkpointTs);
          break;
        case 'stop': {
          const flushed = capture.writing.get(command.key);
          capture.writing.delete(command.key);
          event = { kind: 'stopped', key: command.key, checkpointTs: flushed ?? 0n };
          break;
        }
        case 'barrier':
          break;
      }
      if (event !== undefined) queue.push(...capture.agent.handlePipelineEvent(event).commands);
    }
  };

  const deliver = (outbox: readonly OwnerMessage[]): void => {
    for (const message of structuredClone(outbox)) {
      const capture = captures.get(message.header.to);
      if (capture === undefined) continue;
      const out = capture.agent.handleMessage(message);
      runCommands(capture, out.commands);
      inbox.push(...structuredClone(out.outbox));
    }
    for (const capture of captures.values()) inbox.push(...structuredClone(capture.agent.flush().outbox));
  };

  const advanceCheckpoints = (): void => {
    upstreamTs += 1n;
    for (const capture of captures.values()) {
      for (const [key, flushed] of capture.writing) {
        const next = flushed < upstreamTs - 1n ? upstreamTs - 1n : flushed;
        capture.writing.set(key, next);
        capture.agent.handlePipelineEvent({ kind: 'progress', key, checkpointTs: next, resolvedTs: upstreamTs });
      }
    }
  };

  const tick = (membership?: readonly string[]): number => {
    const reports = inbox;
    inbox = [];
    const started = performance.now();
    const out = coordinator.tick(membership === undefined ? { reports } : { captures: membership, reports });
    const elapsed = performance.now() - started;
    deliver(out.outbox);
    return elapsed;
  };

  // Placement: from nothing to every span replicating.
  const placementStarted = performance.now();
  let placementTicks = 0;
  tick(captureIds);
  placementTicks++;
  while (coordinator.manager.stateCounts.replicating < spanCount || coordinator.phase !== 'running') {
    tick();
    placementTicks++;
    if (placementTicks > 1_000_000) throw new Error('placement did not finish');
  }
  const placementMs = performance.now() - placementStarted;

  // Steady state: every tick every span's checkpoint rises; only the owner's tick is timed.
  const tickMs: number[] = [];
  let advancing = 0;
  const firstCheckpoint = coordinator.checkpointTs;
  for (let i = 0; i < steadyTicks + 10; i++) {
    advanceCheckpoints();
    const ms = tick();
    if (i < 10) continue;
    tickMs.push(ms);
    if (coordinator.lastWatermark.state === 'advancing') advancing++;
  }
  tickMs.sort((a, b) => a - b);
  const checkpointRose = coordinator.checkpointTs > firstCheckpoint;

  // Drain one capture until it holds nothing.
  const drained = captureIds[captureIds.length - 1] as string;
  const drainStarted = performance.now();
  const request = coordinator.requestDrain(drained);
  if (!request.ok) throw new Error(`drain refused: ${request.message}`);
  const drainedSpans = request.remainingSpans ?? 0;
  let drainTicks = 0;
  while ((coordinator.remainingSpans(drained) ?? 1) > 0 || coordinator.manager.stateCounts.replicating < spanCount) {
    if (drainTicks % 20 === 0) advanceCheckpoints();
    tick();
    drainTicks++;
    if (drainTicks > 10_000_000) throw new Error('drain did not finish');
  }
  const drainMs = performance.now() - drainStarted;
  const violations = coordinator.manager.violations.length;
  coordinator.checkInvariants();

  const checkpointTs = coordinator.checkpointTs;

  return {
      spans: spanCount,
      captures: captureCount,
      placementTicks,
      placementMs: Math.round(placementMs),
      tickMsMedian: round(percentile(tickMs, 50)),
      tickMsP99: round(percentile(tickMs, 99)),
      steadyTicks: tickMs.length,
      steadyTicksAdvancing: advancing,
      checkpointRose,
      drainTicks,
      drainMs: Math.round(drainMs),
      drainedSpans,
      checkpointTs: checkpointTs.toString(),
      violations,
  };
}

main();
