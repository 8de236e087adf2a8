/**
 * Owner election over etcd, on the capture's own session lease. Every candidate puts
 * `/owner/<lease-id>` (create-if-absent) holding its capture id; the key with the lowest
 * create revision is the owner, and that revision is the owner's fencing token: every
 * owner write is a transaction comparing the key's create revision, so a deposed owner
 * (its key gone with its lease) can never write.
 */
import type { Etcd3, IKeyValue } from 'etcd3';
import type { ClusterKeys } from './keys.ts';
import type { EtcdSession } from './session.ts';

/** Who owns the cluster, and the revision that fences it. */
export interface OwnerInfo {
  readonly captureId: string;
  readonly revision: bigint;
  readonly key: string;
}

/**
 * The owner among the candidate keys: the lowest create revision. A key without a lease
 * (put by hand, or by a changefeed writing into the cluster's own etcd) belongs to no
 * capture and would block every election for good: it does not count.
 */
export function ownerOf(kvs: readonly IKeyValue[]): OwnerInfo | undefined {
  let best: IKeyValue | undefined;
  for (const kv of kvs) {
    if (kv.lease === '0' || kv.lease === '') continue;
    if (best === undefined || BigInt(kv.create_revision) < BigInt(best.create_revision)) best = kv;
  }
  if (best === undefined) return undefined;
  return { captureId: best.value.toString(), revision: BigInt(best.create_revision), key: best.key.toString() };
}

/** A fenced write: compares on mod revisions, then puts and prefix deletes. */
export interface FencedWrite {
  readonly compares?: readonly { readonly key: string; readonly modRevision: bigint }[];
  readonly puts?: readonly { readonly key: string; readonly value: string }[];
  readonly deletes?: readonly string[];
}

/** What a fenced write did; `revision` is the etcd revision it landed at. */
export type FencedResult = { readonly kind: 'ok'; readonly revision: bigint } | { readonly kind: 'conflict' } | { readonly kind: 'fenced' };

export class Election {
  private myKey: string | undefined;

  constructor(
    private readonly client: Etcd3,
    private readonly keys: ClusterKeys,
    private readonly session: EtcdSession,
    private readonly captureId: string,
  ) {}

  /** Becomes a candidate. Idempotent while the key exists. */
  async campaign(): Promise<void> {
    const key = this.keys.ownerKey(this.session.leaseIdHex);
    await this.client
      .if(key, 'Create', '==', 0)
      .then(this.client.put(key).value(this.captureId).lease(this.session.leaseId))
      .commit();
    this.myKey = key;
  }

  /** Steps down: deletes the candidate key; a successor is elected at once. */
  async resign(): Promise<void> {
    if (this.myKey === undefined) return;
    await this.client.delete().key(this.myKey).exec();
  }

  /** True when `owner` is this capture's candidacy. */
  isMe(owner: OwnerInfo | undefined): boolean {
    return owner !== undefined && owner.key === this.myKey && owner.captureId === this.captureId;
  }

  /**
   * Runs `puts` and `deletes` only while `owner` still holds its election key with the
   * same revision and every compare holds: a key's mod revision (0: the key must not
   * exist). `conflict` when a compare failed, `fenced` when the owner lost its key.
   * `timeoutMs` bounds this one call (shorter than the client's default, for writes
   * that a newer one may replace).
   */
  async fencedTxn(owner: OwnerInfo, write: FencedWrite, timeoutMs?: number): Promise<FencedResult> {
    let txn = this.client.if(owner.key, 'Create', '==', owner.revision.toString());
    for (const compare of write.compares ?? []) txn = txn.and(compare.key, 'Mod', '==', compare.modRevision.toString());
    const ops = [...(write.puts ?? []).map((p) => this.client.put(p.key).value(p.value)), ...(write.deletes ?? []).map((key) => this.client.delete().prefix(key))];
    // On a failed compare, read the owner key back: gone or changed is a fence, else a conflict.
    txn = txn.then(...ops).else(this.client.get(owner.key));
    if (timeoutMs !== undefined) txn = txn.options({ deadline: Date.now() + timeoutMs });
    const result = await txn.commit();
    if (result.succeeded) return { kind: 'ok', revision: BigInt(result.header.revision) };
    const kvs = result.responses[0]?.response_range?.kvs ?? [];
    const stillOwner = kvs.some((kv) => BigInt(kv.create_revision) === owner.revision);
    return stillOwner && (write.compares ?? []).length > 0 ? { kind: 'conflict' } : { kind: 'fenced' };
  }

  /**
   * Lists the keys under `prefix` and the mod revision of the `guard` key (0: none), in one
   * transaction, only while `owner` still holds its election key; with `guard.move`, puts
   * the guard first, so its revision is the transaction's.
   */
  async fencedListGuarded(
    owner: OwnerInfo,
    prefix: string,
    guard: { readonly key: string; readonly value: string; readonly move: boolean },
    timeoutMs?: number,
  ): Promise<{ readonly kind: 'ok'; readonly guardRevision: bigint; readonly keys: string[] } | { readonly kind: 'fenced' }> {
    const first = guard.move ? this.client.put(guard.key).value(guard.value) : this.client.get(guard.key);
    let txn = this.client.if(owner.key, 'Create', '==', owner.revision.toString()).then(first, this.client.getAll().prefix(prefix));
    if (timeoutMs !== undefined) txn = txn.options({ deadline: Date.now() + timeoutMs });
    const result = await txn.commit();
    if (!result.succeeded) return { kind: 'fenced' };
    const keys = (result.responses[1]?.response_range?.kvs ?? []).map((kv) => kv.key.toString());
    const guardRevision = guard.move ? BigInt(result.header.revision) : BigInt(result.responses[0]?.response_range?.kvs[0]?.mod_revision ?? 0);
    return { kind: 'ok', guardRevision, keys };
  }

  /**
   * Runs `puts` and `deletes` only while `owner` still holds its election key with the
   * same revision. Returns false when fenced.
   */
  async fencedPut(owner: OwnerInfo, puts: readonly { key: string; value: string }[], deletes: readonly string[] = []): Promise<boolean> {
    return (await this.fencedTxn(owner, { puts, deletes })).kind === 'ok';
  }
}
