/**
 * What a capture lets through to its agents (DESIGN.md §8b): only messages from the owner
 * it learned from etcd, and only adds of spans inside the changefeed's tables, within
 * the capture's bound on spans held. Pure: the shell feeds it the election it read from
 * etcd and the time, and performs the re-read it asks for.
 *
 * ```
 * message (from, ownerRevision) vs the owner seen in etcd (id, revision):
 *   ownerRevision == revision, from == id  ──► accept
 *   ownerRevision == revision, from != id  ──► refuse 'forged-owner'
 *   ownerRevision <  revision              ──► refuse 'stale-owner'
 *   ownerRevision >  revision, or no owner ──► refuse 'unverified-owner' (+ re-read etcd, at most once per interval)
 * ```
 *
 * A header's revision is never adopted on its own say: a new owner whose first messages
 * arrive before this capture's watch saw its election key is refused, the shell re-reads
 * the election, and the owner's level-triggered resend (every heartbeat) gets through.
 */
import type { AddSpanRequest, AgentSpanState, CaptureId, MessageHeader } from '../core/messages.ts';
import type { Span, TableRange } from '../core/span.ts';
import { endBefore, spanKey } from '../core/span.ts';

/** Why a message did not reach an agent because of who sent it. */
export type OwnerRefusal = 'unverified-owner' | 'forged-owner' | 'stale-owner';

/** The gate's answer for one message. */
export type OwnerCheck =
  | { readonly kind: 'accept' }
  | {
      readonly kind: 'refuse';
      readonly reason: OwnerRefusal;
      /** The shell should re-read the election key from etcd now. */
      readonly verify: boolean;
    };

/** Bounds of the gate. */
export interface OwnerGateLimits {
  /** Fewest ms between two election re-reads asked for by unverified messages. */
  readonly verifyIntervalMs: number;
}

export const ownerGateDefaults: OwnerGateLimits = { verifyIntervalMs: 100 };

/** The owner a capture learned from etcd, and the check of every message against it. */
export class OwnerGate {
  private ownerId: CaptureId | undefined;
  private ownerRevision = 0n;
  private lastVerifyMs = -Infinity;

  constructor(private readonly limits: OwnerGateLimits = ownerGateDefaults) {}

  /** The owner as seen in etcd; true when it is newer than the one known. */
  observe(owner: CaptureId, revision: bigint): boolean {
    if (revision <= this.ownerRevision) return false;
    this.ownerId = owner;
    this.ownerRevision = revision;
    return true;
  }

  /** The owner known, if any. */
  get owner(): { readonly id: CaptureId; readonly revision: bigint } | undefined {
    return this.ownerId === undefined ? undefined : { id: this.ownerId, revision: this.ownerRevision };
  }

  /** Whether a message with this header comes from the owner known; `nowMs` bounds re-reads. */
  check(header: Pick<MessageHeader, 'from' | 'ownerRevision'>, nowMs: number): OwnerCheck {
    if (this.ownerId !== undefined && header.ownerRevision === this.ownerRevision) {
      return header.from === this.ownerId ? { kind: 'accept' } : { kind: 'refuse', reason: 'forged-owner', verify: false };
    }
    if (this.ownerId !== undefined && header.ownerRevision < this.ownerRevision) return { kind: 'refuse', reason: 'stale-owner', verify: false };
    const verify = nowMs - this.lastVerifyMs >= this.limits.verifyIntervalMs;
    if (verify) this.lastVerifyMs = nowMs;
    return { kind: 'refuse', reason: 'unverified-owner', verify };
  }
}

/** True for the agent states with a pipeline running (admitted before). */
export function isRunning(state: AgentSpanState): boolean {
  return state !== 'absent' && state !== 'stopped';
}

/** Why one add did not reach an agent. */
export type SpanRefusal = 'outside-tables' | 'capture-full';

/** The adds let through, and the refused ones with why. */
export interface AddAdmission {
  readonly admitted: AddSpanRequest[];
  readonly refused: { readonly span: Span; readonly reason: SpanRefusal }[];
}

/** True when `span` is a non-empty range inside `table`'s key range. */
export function spanInsideTable(span: Span, table: TableRange): boolean {
  if (span.table !== table.name) return false;
  if (span.start < table.start || endBefore(table.end, span.end)) return false;
  return span.end === '' || span.start < span.end;
}

/**
 * Admits the adds whose span lies inside one of `tables` (by name) while the capture
 * holds fewer than `heldMax` spans. An add of a span `held` (its pipeline running: it was
 * admitted before) is always admitted: it only promotes it, and refusing it would stall
 * a move whose table was removed meanwhile (the owner promotes, then removes).
 */
export function admitAdds(
  adds: readonly AddSpanRequest[],
  tables: ReadonlyMap<string, TableRange>,
  held: { readonly count: number; has(key: string): boolean },
  heldMax: number,
): AddAdmission {
  const admitted: AddSpanRequest[] = [];
  const refused: { span: Span; reason: SpanRefusal }[] = [];
  const added = new Set<string>();
  for (const add of adds) {
    const key = spanKey(add.span);
    if (held.has(key)) {
      admitted.push(add);
      continue;
    }
    const table = tables.get(add.span.table);
    if (table === undefined || !spanInsideTable(add.span, table)) {
      refused.push({ span: add.span, reason: 'outside-tables' });
      continue;
    }
    if (!added.has(key)) {
      if (held.count + added.size >= heldMax) {
        refused.push({ span: add.span, reason: 'capture-full' });
        continue;
      }
      added.add(key);
    }
    admitted.push(add);
  }
  return { admitted, refused };
}
