/**
 * What the coordinator tells the shell happened during a tick. The core never logs:
 * these events leave it as data and the shell logs them (span detail at `debug`).
 */
import type { CaptureId } from './messages.ts';
import type { ReplicationState } from './replication-set.ts';
import type { Span } from './span.ts';
import type { SpanOperationPhase, SpanOperationView } from './span-operation.ts';
import type { TaskKind } from './task.ts';

/** Why the owner ignored a capture's message. */
export type DropReason =
  | 'unknown-capture'
  | 'wrong-owner'
  | 'wrong-changefeed'
  | 'wrong-epoch'
  | 'stale-seq'
  | 'stale-collect';

export type CoordinatorEvent =
  | { readonly type: 'span-state-changed'; readonly span: Span; readonly from: ReplicationState; readonly to: ReplicationState; readonly primary: CaptureId | undefined }
  | { readonly type: 'task-started'; readonly kind: TaskKind; readonly span: Span; readonly capture: CaptureId | undefined; readonly scheduler: string }
  | { readonly type: 'message-dropped'; readonly reason: DropReason; readonly from: CaptureId; readonly seq: number }
  | { readonly type: 'capture-joined'; readonly capture: CaptureId }
  | { readonly type: 'capture-initialized'; readonly capture: CaptureId; readonly spans: number }
  | { readonly type: 'capture-gone'; readonly capture: CaptureId; readonly spansAffected: number }
  | { readonly type: 'rebuilt'; readonly sets: number; readonly captures: number }
  | { readonly type: 'invariant-violation'; readonly message: string; readonly state: unknown }
  | { readonly type: 'checkpoint-advanced'; readonly checkpointTs: bigint; readonly resolvedTs: bigint }
  | { readonly type: 'outbox-overflow'; readonly dropped: number }
  | { readonly type: 'move-refused'; readonly span: Span; readonly capture: CaptureId; readonly reason: string }
  /** A split or merge started: its new spans are being prepared (`span-operation.ts`). */
  | { readonly type: 'operation-started'; readonly operation: SpanOperationView }
  /** It committed: the old spans are being stopped. */
  | { readonly type: 'operation-changed'; readonly operation: SpanOperationView; readonly from: SpanOperationPhase; readonly to: SpanOperationPhase }
  /**
   * It is done: in `table`, the spans `replaced` are gone and `by` take their range. The
   * shell persists the table's new tiling (`Coordinator.tiling()`), so the next owner
   * derives the same spans.
   */
  | { readonly type: 'operation-done'; readonly operation: SpanOperationView; readonly table: string; readonly replaced: readonly Span[]; readonly by: readonly Span[] }
  /**
   * The split policy chose to split `spans[0]` (at `at`) or merge `spans`, for their rate
   * (events a second): `operation` is the id of the operation it started, `refused` why
   * the coordinator's checks did not start it.
   */
  | {
      readonly type: 'split-policy-decided';
      readonly kind: 'split' | 'merge';
      readonly spans: readonly Span[];
      readonly at?: string;
      readonly eventsPerSecond: number;
      readonly operation?: number;
      readonly refused?: string;
    }
  /** It gave up before its commit: the old spans go on, the new ones are stopped. */
  | { readonly type: 'operation-aborted'; readonly operation: SpanOperationView; readonly from: string; readonly reason: string }
  /**
   * A new owner found the captures holding a tiling the persisted one does not have (an
   * operation done, its tiling not persisted yet) and went on with it: persist `spans`.
   */
  | { readonly type: 'tiling-adopted'; readonly table: string; readonly spans: readonly Span[] }
  /** The watermark turned `stalled`: the checkpoint stood still behind the resolved-ts for `stallAfterMs`. */
  | {
      readonly type: 'stall-started';
      readonly checkpointTs: bigint;
      readonly resolvedTs: bigint;
      readonly stalledForMs: number;
      readonly spanCount: number;
      readonly captures: readonly CaptureId[];
    }
  /** The checkpoint moved again (or reached the barrier) after a stall. */
  | { readonly type: 'stall-ended'; readonly checkpointTs: bigint; readonly stalledForMs: number };
