/**
 * Counts of a changefeed's sets by table × state and by primary capture × state, kept in
 * O(1) per set change by the replication manager, so the API's span summary (what the
 * dashboard polls) never walks the spans (issue 11).
 */
import type { CaptureId } from './messages.ts';
import type { ReplicationState } from './replication-set.ts';

/** Sets per state. */
export type SummaryCounts = Record<ReplicationState, number>;

const zero = (): SummaryCounts => ({ absent: 0, prepare: 0, commit: 0, replicating: 0, removing: 0 });

/** The key of sets without a primary in {@link SpanSummary.byCapture}. */
export const noPrimary = '';

export class SpanSummary {
  /** Table name -> counts; a table leaves when its last set does. */
  readonly byTable = new Map<string, SummaryCounts>();
  /** Primary capture ({@link noPrimary} for none) -> counts. */
  readonly byCapture = new Map<string, SummaryCounts>();

  /** Counts one set in (`delta` 1) or out (-1). */
  count(table: string, primary: CaptureId | undefined, state: ReplicationState, delta: 1 | -1): void {
    bump(this.byTable, table, state, delta);
    bump(this.byCapture, primary ?? noPrimary, state, delta);
  }
}

function bump(map: Map<string, SummaryCounts>, key: string, state: ReplicationState, delta: 1 | -1): void {
  let counts = map.get(key);
  if (counts === undefined) {
    counts = zero();
    map.set(key, counts);
  }
  counts[state] += delta;
  if (delta < 0 && counts.absent + counts.prepare + counts.commit + counts.replicating + counts.removing === 0) map.delete(key);
}
