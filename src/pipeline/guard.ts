/**
 * The bounds of `bounds.ts` applied to a changefeed's source and sink URIs (endpoints, the
 * metadata etcd, the file sink's root, credential files under `--credentials-root`): once when a
 * changefeed is created or updated ({@link checkChangefeedBounds}), and again by the
 * capture that opens them ({@link GuardedSource}, {@link GuardedSink}): before the first
 * call reaches the real source or sink, and for every span it is given. A URI outside
 * the bounds fails every call with a non-retryable {@link BoundsError}, which fails the
 * changefeed with that message; nothing is read or written.
 */
import type { QuietAnswer, QuietRequest } from '../agent/quiet-spans.ts';
import type { Span } from '../core/span.ts';
import type { PipelineBounds } from './bounds.ts';
import { BoundsError, checkCredentialFile, checkEndpointsAllowed, checkFileSinkDir, checkMirrorRange, checkSourceRange, isMetadataEtcd, splitEndpoint, tableNameProblem } from './bounds.ts';
import type { EtcdUriSecurity } from './etcd-uri-security.ts';
import { loadEtcdUriSecurity } from './etcd-uri-security.ts';
import type { RetireScope, Sink } from './sink.ts';
import type { ChangeEvent, ReadResult, SnapshotPage, SnapshotSource, Source, SourceStats } from './source.ts';
import { parseEtcdSinkUri } from './sinks/etcd.ts';
import { parseFileSinkUri } from './sinks/file.ts';
import { parsePostgresSinkUri, postgresEndpoint } from './sinks/postgres.ts';
import { parseEtcdSourceUri } from './sources/etcd.ts';

/** A key range a source reads or a sink writes: a table's, or a span's. */
export interface KeyRange {
  readonly table: string;
  readonly start: string;
  readonly end: string;
}

function schemeOf(uri: string): string {
  return /^([a-z]+):/.exec(uri)?.[1] ?? '';
}

/**
 * What to do when an etcd cannot be asked whether it is the metadata etcd: `fail`
 * (retryably: a capture opening it could not use it either) or `allow` (a create while
 * the sink is down: the capture that opens it checks again).
 */
export type Unreachable = 'fail' | 'allow';

async function metadataOrUnknown(endpoints: readonly string[], bounds: PipelineBounds, unreachable: Unreachable, security: EtcdUriSecurity): Promise<boolean> {
  // Before anything is dialled: the credential files must be under --credentials-root.
  const loaded = await loadEtcdUriSecurity(security, bounds.credentialsRoot);
  try {
    return await isMetadataEtcd(endpoints, bounds.metadata, loaded);
  } catch (error) {
    if (unreachable === 'allow' && error instanceof BoundsError && error.retryable) return false;
    throw error;
  }
}

/** What a source URI is allowed, once its URI-wide checks passed: a check per range. */
export type RangeCheck = (range: KeyRange) => void;

/**
 * The URI-wide checks of a source (allowed endpoints, whether it is the metadata etcd);
 * resolves with the check each range it reads must pass.
 */
export async function checkSourceUri(uri: string, bounds: PipelineBounds, unreachable: Unreachable = 'fail'): Promise<RangeCheck> {
  if (schemeOf(uri) !== 'etcd') return () => undefined;
  const { endpoints, security } = parseEtcdSourceUri(uri);
  checkEndpointsAllowed(bounds.allowedEndpoints, endpoints.map((e) => splitEndpoint(e, 2379)), 'the source');
  if (!(await metadataOrUnknown(endpoints, bounds, unreachable, security))) return () => undefined;
  return (range) => checkSourceRange(uri, range);
}

/** The same for a sink: the file sink's directory, endpoints, the metadata etcd. */
export async function checkSinkUri(uri: string, bounds: PipelineBounds, unreachable: Unreachable = 'fail'): Promise<RangeCheck> {
  const tableNames: RangeCheck = (range) => {
    const problem = tableNameProblem(range.table);
    if (problem !== undefined) throw new BoundsError(`the sink cannot write table ${JSON.stringify(range.table)}: ${problem}`);
  };
  switch (schemeOf(uri)) {
    case 'file':
      await checkFileSinkDir(parseFileSinkUri(uri).dir, bounds.fileSinkRoot);
      return tableNames;
    case 'etcd': {
      const options = parseEtcdSinkUri(uri);
      checkEndpointsAllowed(bounds.allowedEndpoints, options.endpoints.map((e) => splitEndpoint(e, 2379)), 'the sink');
      if (!(await metadataOrUnknown(options.endpoints, bounds, unreachable, options.security))) return tableNames;
      return (range) => {
        tableNames(range);
        checkMirrorRange(uri, options.targetPrefix, range);
      };
    }
    case 'postgres':
    case 'postgresql': {
      const options = parsePostgresSinkUri(uri);
      checkEndpointsAllowed(bounds.allowedEndpoints, [postgresEndpoint(options)], 'the sink');
      if (options.passwordFile !== undefined) await checkCredentialFile(options.passwordFile, bounds.credentialsRoot, 'passwordFile');
      return tableNames;
    }
    default:
      return tableNames;
  }
}

/**
 * Checks a changefeed's source and sink against the bounds for the key ranges of its
 * tables; throws a {@link BoundsError}. When an etcd cannot be asked whether it is the
 * metadata etcd (it is down), the check is left to the capture that opens it.
 */
export async function checkChangefeedBounds(sourceUri: string, sinkUri: string, ranges: readonly KeyRange[], bounds: PipelineBounds): Promise<void> {
  const [source, sink] = await Promise.all([checkSourceUri(sourceUri, bounds, 'allow'), checkSinkUri(sinkUri, bounds, 'allow')]);
  for (const range of ranges) {
    source(range);
    sink(range);
  }
}

/**
 * Runs a URI check once before the first call, again after a retryable failure; a
 * non-retryable failure is kept and fails every call.
 */
class Gate {
  private checked: Promise<RangeCheck> | undefined;

  constructor(private readonly check: () => Promise<RangeCheck>) {}

  /** Resolves once the URI-wide checks passed and `span` passes its range check. */
  async pass(span: Span): Promise<void> {
    (await this.passAny())(span);
  }

  /** Resolves with the range check once the URI-wide checks passed. */
  async passAny(): Promise<RangeCheck> {
    const current = (this.checked ??= this.check());
    try {
      return await current;
    } catch (error) {
      if (this.checked === current && (!(error instanceof BoundsError) || error.retryable)) this.checked = undefined;
      throw error;
    }
  }
}

/** A source whose calls pass the bounds first. */
export class GuardedSource implements Source {
  readonly snapshots?: SnapshotSource;
  readonly release?: (span: Span) => void;
  readonly earliestTs?: () => Promise<bigint>;
  readonly stats?: () => SourceStats;
  readonly quietUpTo?: (requests: readonly QuietRequest[]) => Promise<readonly QuietAnswer[]>;
  private readonly gate: Gate;

  constructor(
    private readonly inner: Source,
    uri: string,
    bounds: PipelineBounds,
  ) {
    this.gate = new Gate(() => checkSourceUri(uri, bounds));
    const snapshots = inner.snapshots;
    if (snapshots !== undefined) {
      const gate = this.gate;
      this.snapshots = {
        ...(snapshots.backfillLimits === undefined ? {} : { backfillLimits: snapshots.backfillLimits }),
        async snapshot(span, atTs, afterKey, limit, sinceTs): Promise<SnapshotPage> {
          await gate.pass(span);
          return snapshots.snapshot(span, atTs, afterKey, limit, sinceTs);
        },
        async countKeys(span, atTs): Promise<number> {
          await gate.pass(span);
          return snapshots.countKeys(span, atTs);
        },
      };
    }
    if (inner.release !== undefined) this.release = (span) => inner.release?.(span);
    const quietUpTo = inner.quietUpTo;
    if (quietUpTo !== undefined) {
      // Every span of the check passes its range check, or the whole check fails (its
      // spans then take steps, where the one out of bounds fails on its own).
      this.quietUpTo = async (requests) => {
        const check = await this.gate.passAny();
        for (const request of requests) check(request.span);
        return quietUpTo.call(inner, requests);
      };
    }
    const stats = inner.stats;
    if (stats !== undefined) this.stats = () => stats.call(inner);
    const earliest = inner.earliestTs;
    if (earliest !== undefined) {
      this.earliestTs = async () => {
        await this.gate.passAny();
        return earliest.call(inner);
      };
    }
  }

  async resolvedTs(span: Span, afterTs: bigint): Promise<bigint> {
    await this.gate.pass(span);
    return this.inner.resolvedTs(span, afterTs);
  }

  async read(span: Span, afterTs: bigint, uptoTs: bigint, limit: number): Promise<ReadResult> {
    await this.gate.pass(span);
    return this.inner.read(span, afterTs, uptoTs, limit);
  }

  async currentTs(): Promise<bigint> {
    await this.gate.passAny();
    return this.inner.currentTs();
  }

  close(): Promise<void> {
    return this.inner.close();
  }
}

/** A sink whose calls pass the bounds first. */
export class GuardedSink implements Sink {
  readonly observeCheckpoint?: (checkpointTs: bigint) => void;
  private readonly gate: Gate;

  constructor(
    private readonly inner: Sink,
    uri: string,
    bounds: PipelineBounds,
  ) {
    this.gate = new Gate(() => checkSinkUri(uri, bounds));
    if (inner.observeCheckpoint !== undefined) this.observeCheckpoint = (ts) => inner.observeCheckpoint?.(ts);
  }

  async write(span: Span, events: readonly ChangeEvent[]): Promise<void> {
    await this.gate.pass(span);
    return this.inner.write(span, events);
  }

  async flush(span: Span, uptoTs: bigint): Promise<void> {
    await this.gate.pass(span);
    return this.inner.flush(span, uptoTs);
  }

  async retire(span: Span, beforeTs: bigint, scope?: RetireScope): Promise<void> {
    await this.gate.pass(span);
    return this.inner.retire(span, beforeTs, scope);
  }

  close(): Promise<void> {
    return this.inner.close();
  }
}

/** A source or sink whose URI could not be parsed when a capture opened it: every call fails. */
export class FailedEndpoint implements Source, Sink {
  constructor(private readonly error: Error & { readonly retryable?: boolean }) {}

  private fail(): never {
    throw this.error;
  }

  async resolvedTs(): Promise<bigint> {
    return this.fail();
  }

  async read(): Promise<ReadResult> {
    return this.fail();
  }

  async currentTs(): Promise<bigint> {
    return this.fail();
  }

  async write(): Promise<void> {
    return this.fail();
  }

  async flush(): Promise<void> {
    return this.fail();
  }

  async retire(): Promise<void> {
    return this.fail();
  }

  async close(): Promise<void> {}
}
