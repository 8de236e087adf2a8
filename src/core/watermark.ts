/**
 * The changefeed's global watermark (DESIGN.md §5), computed each tick in O(captures):
 *
 * 1. some live capture has not answered its first heartbeat -> cannot proceed;
 * 2. the spans do not tile every table exactly -> cannot proceed;
 * 3. a split or merge is in flight, or some span is not replicating (an add, move or
 *    remove is in flight) -> cannot proceed;
 * 4. some capture's latest aggregate does not cover exactly the spans the owner believes
 *    it replicates (digest mismatch: stale or ahead) -> cannot proceed;
 * 5. otherwise checkpoint = min of the captures' aggregate checkpoints, resolved = min of
 *    their resolved, both clamped to the barrier and to checkpoint <= resolved.
 *
 * Step 4 replaces a scan of every span: each capture reports one aggregate over the
 * spans it replicates as primary, tagged with their digest, and the owner keeps the
 * digest it expects per capture incrementally.
 */
import type { CaptureId, CaptureWatermark } from './messages.ts';
import type { CaptureSpans, StateCounts } from './replication-manager.ts';
import type { CoverageProblem } from './span.ts';
import { digestsEqual } from './span-digest.ts';
import type { StallHolders } from './stall-detector.ts';
import { tsMin } from './ts.ts';

/** Why the watermark is withheld. */
export type CannotProceedReason =
  | { readonly code: 'capture-not-initialized'; readonly captures: readonly CaptureId[] }
  | { readonly code: 'no-spans' }
  | { readonly code: 'span-coverage'; readonly problem: CoverageProblem }
  | { readonly code: 'span-operation'; readonly operations: number }
  | { readonly code: 'span-not-replicating'; readonly absent: number; readonly prepare: number; readonly commit: number; readonly removing: number }
  | { readonly code: 'capture-watermark-stale'; readonly captures: readonly CaptureId[] }
  | { readonly code: 'failed'; readonly message: string };

/**
 * The coordinator's answer for one tick. `stalled` is an advancing watermark whose
 * checkpoint has stood still behind the resolved-ts for `stallAfterMs` (see
 * `stall-detector.ts`); `cannot-proceed` takes precedence over it.
 */
export type Watermark =
  | { readonly state: 'advancing'; readonly checkpointTs: bigint; readonly resolvedTs: bigint }
  | {
      readonly state: 'stalled';
      readonly checkpointTs: bigint;
      readonly resolvedTs: bigint;
      /** How long the checkpoint has stood still behind the resolved-ts. */
      readonly stalledForMs: number;
      readonly heldBy: StallHolders;
    }
  | { readonly state: 'cannot-proceed'; readonly reason: CannotProceedReason };

/** Everything the watermark depends on. */
export interface WatermarkInput {
  readonly uninitialized: readonly CaptureId[];
  readonly coverage: CoverageProblem | undefined;
  /** Splits and merges in flight: each withholds the watermark until it is done. */
  readonly operations?: number;
  readonly spanCount: number;
  readonly stateCounts: StateCounts;
  /** Per capture: the owner's index and the capture's latest aggregate. */
  readonly captures: Iterable<readonly [CaptureId, CaptureSpans, CaptureWatermark | undefined]>;
  readonly barrierTs: bigint;
}

/** How many capture ids a stale-watermark reason lists at most. */
const staleCapturesListedMax = 5;

/** Computes the watermark (never `stalled`: the coordinator adds that); O(captures). */
export function computeWatermark(input: WatermarkInput): Exclude<Watermark, { state: 'stalled' }> {
  if (input.uninitialized.length > 0) {
    return { state: 'cannot-proceed', reason: { code: 'capture-not-initialized', captures: input.uninitialized } };
  }
  if (input.spanCount === 0) return { state: 'cannot-proceed', reason: { code: 'no-spans' } };
  if (input.coverage !== undefined) {
    return { state: 'cannot-proceed', reason: { code: 'span-coverage', problem: input.coverage } };
  }
  if ((input.operations ?? 0) > 0) return { state: 'cannot-proceed', reason: { code: 'span-operation', operations: input.operations ?? 0 } };
  const counts = input.stateCounts;
  if (counts.replicating !== input.spanCount) {
    return {
      state: 'cannot-proceed',
      reason: { code: 'span-not-replicating', absent: counts.absent, prepare: counts.prepare, commit: counts.commit, removing: counts.removing },
    };
  }
  let checkpointTs: bigint | undefined;
  let resolvedTs: bigint | undefined;
  const stale: CaptureId[] = [];
  for (const [capture, spans, aggregate] of input.captures) {
    const expected = spans.replicatingDigest;
    if (expected.count === 0) continue;
    if (aggregate === undefined || !digestsEqual(aggregate.digest, expected)) {
      if (stale.length < staleCapturesListedMax) stale.push(capture);
      continue;
    }
    checkpointTs = checkpointTs === undefined ? aggregate.checkpointTs : tsMin(checkpointTs, aggregate.checkpointTs);
    resolvedTs = resolvedTs === undefined ? aggregate.resolvedTs : tsMin(resolvedTs, aggregate.resolvedTs);
  }
  if (stale.length > 0) return { state: 'cannot-proceed', reason: { code: 'capture-watermark-stale', captures: stale } };
  if (checkpointTs === undefined || resolvedTs === undefined) return { state: 'cannot-proceed', reason: { code: 'no-spans' } };
  resolvedTs = tsMin(resolvedTs, input.barrierTs);
  checkpointTs = tsMin(tsMin(checkpointTs, input.barrierTs), resolvedTs);
  return { state: 'advancing', checkpointTs, resolvedTs };
}

/** A one-line explanation of a reason, for the API and logs. */
export function describeReason(reason: CannotProceedReason): string {
  switch (reason.code) {
    case 'capture-not-initialized':
      return `waiting for the first heartbeat answer of ${reason.captures.join(', ')}`;
    case 'no-spans':
      return 'the changefeed has no spans';
    case 'span-coverage':
      return `spans do not cover table ${reason.problem.table} exactly (${reason.problem.kind})`;
    case 'span-operation':
      return `${reason.operations} split or merge operation(s) in flight`;
    case 'span-not-replicating':
      return `spans in flight: ${reason.absent} absent, ${reason.prepare} preparing, ${reason.commit} committing, ${reason.removing} removing`;
    case 'capture-watermark-stale':
      return `waiting for a current watermark from ${reason.captures.join(', ')}`;
    case 'failed':
      return `changefeed failed: ${reason.message}`;
  }
}
