/**
 * A capture's copy of every changefeed's info and status, with the etcd mod revision of
 * each, kept from two feeds: the prefix watch's snapshots (whole reads of the prefix)
 * and the owner's own writes, applied the moment etcd took them.
 *
 * The two race: a read that started before a write may answer after it. Each key
 * therefore keeps the newer of what it has: a write is recorded with the revision it
 * landed at, and a snapshot read at an older revision cannot undo it (neither bring back
 * a deleted changefeed nor hide a created one). Before this, a changefeed created on the
 * owner could vanish from the cache for one read; the owner re-created its coordinator
 * with sequence numbers the captures had already seen, and they dropped its heartbeats
 * until the next owner change.
 */
import type { IKeyValue } from 'etcd3';
import type { ChangefeedInfo, ChangefeedStatus } from '../server/changefeed-info.ts';

/** A value with the mod revision etcd holds it at. */
export interface Versioned<T> {
  readonly value: T;
  readonly modRevision: bigint;
}

/** A write etcd took: per key, the new value or `null` for a delete. */
export interface CachedWrite {
  readonly id: string;
  readonly info?: ChangefeedInfo | null;
  readonly status?: ChangefeedStatus | null;
}

type Kind = 'info' | 'status';

export class ChangefeedCache {
  private infoEntries = new Map<string, Versioned<ChangefeedInfo>>();
  private statusEntries = new Map<string, Versioned<ChangefeedStatus>>();
  /** Writes newer than the last snapshot: `kind/id` -> revision (and the value, null when deleted). */
  private readonly writes = new Map<string, { readonly revision: bigint; readonly value: ChangefeedInfo | ChangefeedStatus | null }>();
  private views: { infos: Map<string, ChangefeedInfo>; statuses: Map<string, ChangefeedStatus> } | undefined;

  constructor(
    private readonly prefix: string,
    private readonly onMalformed: (key: string) => void = () => undefined,
  ) {}

  /** Infos by changefeed id. */
  get infos(): ReadonlyMap<string, ChangefeedInfo> {
    return this.view().infos;
  }

  /** Statuses by changefeed id. */
  get statuses(): ReadonlyMap<string, ChangefeedStatus> {
    return this.view().statuses;
  }

  info(id: string): Versioned<ChangefeedInfo> | undefined {
    return this.infoEntries.get(id);
  }

  status(id: string): Versioned<ChangefeedStatus> | undefined {
    return this.statusEntries.get(id);
  }

  /** A whole read of the prefix at `revision`. */
  applySnapshot(revision: bigint, kvs: readonly IKeyValue[]): void {
    const infos = new Map<string, Versioned<ChangefeedInfo>>();
    const statuses = new Map<string, Versioned<ChangefeedStatus>>();
    for (const kv of kvs) {
      const key = kv.key.toString();
      const [id, kind, ...rest] = key.slice(this.prefix.length).split('/');
      if (id === undefined || rest.length > 0 || (kind !== 'info' && kind !== 'status')) continue;
      const modRevision = BigInt(kv.mod_revision);
      // Unchanged since the last read: keep the parsed value (and its identity, which
      // tells the owner that nothing changed) instead of parsing it again.
      const known = kind === 'info' ? this.infoEntries.get(id) : this.statusEntries.get(id);
      if (known !== undefined && known.modRevision === modRevision) {
        if (kind === 'info') infos.set(id, known as Versioned<ChangefeedInfo>);
        else statuses.set(id, known as Versioned<ChangefeedStatus>);
        continue;
      }
      try {
        const value: unknown = JSON.parse(kv.value.toString());
        if (typeof value !== 'object' || value === null) throw new Error('not an object');
        if (kind === 'info') infos.set(id, { value: value as ChangefeedInfo, modRevision });
        else statuses.set(id, { value: value as ChangefeedStatus, modRevision });
      } catch {
        this.onMalformed(key);
      }
    }
    // Writes the read predates stay; the others are in the read (or were undone since).
    for (const [name, write] of this.writes) {
      if (write.revision <= revision) {
        this.writes.delete(name);
        continue;
      }
      const [kind, id] = splitName(name);
      const target = kind === 'info' ? infos : statuses;
      if (write.value === null) target.delete(id);
      else (target as Map<string, Versioned<unknown>>).set(id, { value: write.value, modRevision: write.revision });
    }
    this.infoEntries = infos;
    this.statusEntries = statuses;
    this.views = undefined;
  }

  /** A write that etcd took at `revision`. */
  applyWrite(revision: bigint, write: CachedWrite): void {
    const apply = <T extends ChangefeedInfo | ChangefeedStatus>(kind: Kind, entries: Map<string, Versioned<T>>, value: T | null | undefined): void => {
      if (value === undefined) return;
      const current = entries.get(write.id);
      if (current !== undefined && current.modRevision > revision) return;
      this.writes.set(`${kind}/${write.id}`, { revision, value });
      if (value === null) entries.delete(write.id);
      else entries.set(write.id, { value, modRevision: revision });
    };
    apply('info', this.infoEntries, write.info);
    apply('status', this.statusEntries, write.status);
    this.views = undefined;
  }

  private view(): { infos: Map<string, ChangefeedInfo>; statuses: Map<string, ChangefeedStatus> } {
    this.views ??= {
      infos: new Map([...this.infoEntries].map(([id, entry]) => [id, entry.value])),
      statuses: new Map([...this.statusEntries].map(([id, entry]) => [id, entry.value])),
    };
    return this.views;
  }
}

function splitName(name: string): [Kind, string] {
  const slash = name.indexOf('/');
  return [name.slice(0, slash) as Kind, name.slice(slash + 1)];
}
