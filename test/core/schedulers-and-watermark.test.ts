import { describe, expect, it } from 'vitest';
import { CaptureSpans, ReplicationManager } from '../../src/core/replication-manager.ts';
import { SeededRandom } from '../../src/core/rng.ts';
import { BalanceScheduler } from '../../src/core/scheduler/balance-scheduler.ts';
import { BasicScheduler } from '../../src/core/scheduler/basic-scheduler.ts';
import { DrainScheduler } from '../../src/core/scheduler/drain-scheduler.ts';
import { MoveScheduler } from '../../src/core/scheduler/move-scheduler.ts';
import { RebalanceScheduler } from '../../src/core/scheduler/rebalance-scheduler.ts';
import type { SchedulerView } from '../../src/core/scheduler/scheduler.ts';
import type { TableRange } from '../../src/core/span.ts';
import { spanKey, splitTable } from '../../src/core/span.ts';
import { MutableDigest } from '../../src/core/span-digest.ts';
import { maxTs } from '../../src/core/ts.ts';
import { computeWatermark } from '../../src/core/watermark.ts';

const table: TableRange = { name: 't', start: '', end: '' };
const boundaries = Array.from({ length: 11 }, (_, i) => `k${String(i + 1).padStart(2, '0')}`);
const spans = splitTable(table, boundaries); // 12 spans

/** A manager with every span replicating on the captures of `layout`, in turn (none: all absent). */
function placed(layout: string[], captures: string[] = ['c1', 'c2', 'c3']): ReplicationManager {
  const m = new ReplicationManager({ moveTasksInFlightMax: 100, addRemoveTasksInFlightMax: 1000, addBatchPerTickMax: 1000 }, 1n, () => 0);
  for (const c of captures) m.addCapture(c);
  m.setDesiredSpans([table], spans);
  if (layout.length > 0) spans.forEach((span, i) => {
    const capture = layout[i % layout.length] as string;
    m.handleTasks([{ kind: 'add', key: spanKey(span), capture }], () => true, 'test');
    m.handleStatus(capture, { span, state: 'replicating', checkpointTs: 1n, resolvedTs: 1n }, Number.MAX_SAFE_INTEGER);
  });
  m.takePending();
  m.checkInvariants();
  return m;
}

function view(m: ReplicationManager, options: { leaving?: string[]; moveSlots?: number; addSlots?: number; tick?: number; seed?: number; captures?: string[] } = {}): SchedulerView {
  const captures = options.captures ?? ['c1', 'c2', 'c3'];
  return {
    captures,
    isLeaving: (c) => options.leaving?.includes(c) ?? false,
    spansOf: (c) => m.captureSpans(c) ?? new CaptureSpans(),
    absentSets: m.absentSets,
    unwantedSets: m.unwantedSets,
    spanCount: m.sets.size,
    moveSlots: options.moveSlots ?? 10,
    addSlots: options.addSlots ?? 10,
    rng: new SeededRandom(options.seed ?? 1),
    tick: options.tick ?? 1,
  };
}

describe('basic scheduler', () => {
  it('adds absent spans round-robin over captures that are not leaving, bounded per tick', () => {
    const m = placed([], ['c1', 'c2', 'c3']);
    const tasks = new BasicScheduler().schedule(view(m, { addSlots: 5, leaving: ['c2'] }));
    expect(tasks.map((t) => (t.kind === 'add' ? t.capture : ''))).toEqual(['c1', 'c3', 'c1', 'c3', 'c1']);
  });

  it('falls back to leaving captures when no other is left', () => {
    const m = placed([], ['c1']);
    const tasks = new BasicScheduler().schedule(view(m, { addSlots: 2, leaving: ['c1'], captures: ['c1'] }));
    expect(tasks).toHaveLength(2);
  });

  it('removes unwanted spans first', () => {
    const m = placed(['c1']);
    m.setDesiredSpans([table], []);
    const tasks = new BasicScheduler().schedule(view(m, { addSlots: 3 }));
    expect(tasks.map((t) => t.kind)).toEqual(['remove', 'remove', 'remove']);
  });
});

describe('drain scheduler', () => {
  it('moves the leaving capture primaries to the least loaded others, never to a leaving one', () => {
    const m = placed(['c1', 'c1', 'c1', 'c2']);
    const tasks = new DrainScheduler().schedule(view(m, { leaving: ['c1'], moveSlots: 4 }));
    expect(tasks).toHaveLength(4);
    expect(tasks.every((t) => t.kind === 'move' && t.capture !== 'c1')).toBe(true);
    // c3 holds nothing, c2 holds 3: the first moves go to c3.
    expect(tasks.map((t) => (t.kind === 'move' ? t.capture : ''))).toEqual(['c3', 'c3', 'c3', 'c2']);
  });

  it('does nothing without a target', () => {
    const m = placed(['c1']);
    expect(new DrainScheduler().schedule(view(m, { leaving: ['c1', 'c2', 'c3'] }))).toEqual([]);
  });
});

describe('move scheduler', () => {
  it('queues a bounded number of moves and releases them as slots allow', () => {
    const scheduler = new MoveScheduler(2);
    expect(scheduler.request('a', 'c1')).toBe(true);
    expect(scheduler.request('b', 'c1')).toBe(true);
    expect(scheduler.request('c', 'c1')).toBe(false);
    const m = placed(['c1']);
    expect(scheduler.schedule(view(m, { moveSlots: 1 }))).toEqual([{ kind: 'move', key: 'a', capture: 'c1' }]);
    expect(scheduler.queued).toBe(1);
  });
});

describe('rebalance and balance', () => {
  it('rebalance moves spans until every capture holds at most ceil(spans / captures)', () => {
    const m = placed(['c1']);
    const scheduler = new RebalanceScheduler();
    scheduler.request();
    const tasks = scheduler.schedule(view(m, { moveSlots: 100 }));
    // 12 spans over 3 captures: c1 keeps 4, 8 move, 4 to each of the others.
    expect(tasks).toHaveLength(8);
    const counts = new Map<string, number>();
    for (const t of tasks) if (t.kind === 'move') counts.set(t.capture, (counts.get(t.capture) ?? 0) + 1);
    expect(Object.fromEntries(counts)).toEqual({ c2: 4, c3: 4 });
    expect(scheduler.active).toBe(true);
    // Once balanced it stops by itself.
    const balanced = placed(['c1', 'c2', 'c3']);
    expect(scheduler.schedule(view(balanced))).toEqual([]);
    expect(scheduler.active).toBe(false);
  });

  it('is deterministic for a seed', () => {
    const plan = (seed: number): unknown => {
      const s = new RebalanceScheduler();
      s.request();
      return s.schedule(view(placed(['c1']), { moveSlots: 3, seed }));
    };
    expect(plan(5)).toEqual(plan(5));
  });

  it('balance runs one bounded round per interval', () => {
    const m = placed(['c1']);
    const scheduler = new BalanceScheduler(10, 2, 0);
    expect(scheduler.schedule(view(m, { tick: 5 }))).toEqual([]);
    expect(scheduler.schedule(view(m, { tick: 10 }))).toHaveLength(2);
    expect(scheduler.schedule(view(m, { tick: 11 }))).toEqual([]);
    expect(scheduler.schedule(view(m, { tick: 20 }))).toHaveLength(2);
  });
});

describe('watermark', () => {
  const counts = { absent: 0, prepare: 0, commit: 0, replicating: 2, removing: 0 };
  const spansOn = (keys: string[]): CaptureSpans => {
    const s = new CaptureSpans();
    for (const key of keys) s.replicatingDigest.add(key);
    return s;
  };
  const digestOf = (keys: string[]): MutableDigest => {
    const d = new MutableDigest();
    for (const key of keys) d.add(key);
    return d;
  };
  const base = {
    uninitialized: [],
    coverage: undefined,
    spanCount: 2,
    stateCounts: counts,
    barrierTs: maxTs,
  };

  it('gives each cannot-proceed reason in order', () => {
    expect(computeWatermark({ ...base, uninitialized: ['c9'], captures: [] })).toMatchObject({ reason: { code: 'capture-not-initialized', captures: ['c9'] } });
    expect(computeWatermark({ ...base, spanCount: 0, captures: [] })).toMatchObject({ reason: { code: 'no-spans' } });
    expect(computeWatermark({ ...base, coverage: { kind: 'gap', table: 't', after: 'a', before: 'b' }, captures: [] })).toMatchObject({
      reason: { code: 'span-coverage' },
    });
    expect(computeWatermark({ ...base, stateCounts: { ...counts, replicating: 1, commit: 1 }, captures: [] })).toMatchObject({
      reason: { code: 'span-not-replicating', commit: 1 },
    });
    expect(
      computeWatermark({ ...base, captures: [['c1', spansOn(['a', 'b']), { checkpointTs: 5n, resolvedTs: 6n, digest: digestOf(['a']).snapshot() }]] }),
    ).toMatchObject({ reason: { code: 'capture-watermark-stale', captures: ['c1'] } });
    expect(computeWatermark({ ...base, captures: [['c1', spansOn(['a', 'b']), undefined]] })).toMatchObject({ reason: { code: 'capture-watermark-stale' } });
  });

  it('advances to the min over captures, clamped to the barrier and to checkpoint <= resolved', () => {
    const captures = [
      ['c1', spansOn(['a']), { checkpointTs: 50n, resolvedTs: 70n, digest: digestOf(['a']).snapshot() }],
      ['c2', spansOn(['b']), { checkpointTs: 40n, resolvedTs: 90n, digest: digestOf(['b']).snapshot() }],
      ['c3', spansOn([]), undefined],
    ] as const;
    expect(computeWatermark({ ...base, captures })).toEqual({ state: 'advancing', checkpointTs: 40n, resolvedTs: 70n });
    expect(computeWatermark({ ...base, captures, barrierTs: 45n })).toEqual({ state: 'advancing', checkpointTs: 40n, resolvedTs: 45n });
    expect(computeWatermark({ ...base, captures, barrierTs: 30n })).toEqual({ state: 'advancing', checkpointTs: 30n, resolvedTs: 30n });
  });
});
