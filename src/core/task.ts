/**
 * Scheduling tasks: what a policy asks the replication manager to do to one span. The
 * manager validates each one (one task per span, bounded tasks in flight) before it
 * touches a replication set.
 */
import type { CaptureId } from './messages.ts';

export type TaskKind = 'add' | 'move' | 'remove';

export type Task =
  | { readonly kind: 'add'; readonly key: string; readonly capture: CaptureId }
  | { readonly kind: 'move'; readonly key: string; readonly capture: CaptureId }
  | { readonly kind: 'remove'; readonly key: string };
