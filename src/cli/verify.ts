/**
 * `spanfeed verify`: compares upstream and sink at a changefeed's persisted checkpoint
 * (or at an explicit ts) and prints one JSON line; exit 0 only when nothing is missing,
 * mismatched or extra.
 *
 *   spanfeed verify --changefeed <id> [--etcd host:port,...] [--cluster <id>]
 *   spanfeed verify --source <uri> --sink <uri> --tables '<json table list>' --at <ts>
 */
import { resolve } from 'node:path';
import { setTimeout as sleepFor } from 'node:timers/promises';
import { parseArgs } from 'node:util';
import { createEtcdClient } from '../cluster/etcd-client.ts';
import { clusterKeys } from '../cluster/keys.ts';
import type { ChangefeedInfo, ChangefeedStatus, TableSpec } from '../server/changefeed-info.ts';
import { ValidationError, changefeedSpans, parseTables, parseTs, validateId } from '../server/changefeed-info.ts';
import { RetentionHorizonError, verify } from '../verify/verifier.ts';
import type { BackfillRecord } from '../pipeline/backfill.ts';
import { backfillKey, isOfGeneration } from '../pipeline/backfill.ts';
import { redactSecrets } from '../pipeline/redact.ts';
import type { EtcdSecurity } from '../cluster/etcd-client.ts';
import { metadataEtcdSecurity } from '../security/etcd-security.ts';
import { serverDefaults } from '../server/server-config.ts';

export const verifyUsage = `spanfeed verify --changefeed <id> [--etcd host:port,...] [--cluster <id>] [etcd flags]
spanfeed verify --source <uri> --sink <uri> --tables '<json>' --at <ts>

The cluster's etcd takes the flags of spanfeed server: --etcd (host:port or
https://host:port), --etcd-ca, --etcd-cert, --etcd-key, --etcd-user,
--etcd-password-file. Files the source and sink URIs name (ca, cert, key,
passwordFile) must lie under --credentials-root <dir> (default
./spanfeed-credentials), as on a capture.

Compares the upstream tables at the changefeed's persisted checkpoint (or --at) with
what the sink holds at that ts, and prints {"atTs","tables","tablesPending",
"keysChecked","missing","mismatched","extra"}. Exits 0 only when all three counts are 0.
A backfilled table joins the changefeed once every span of it has its snapshot in the
sink at or below the checkpoint: until then it is pending, not checked. Sources: etcd://; sinks:
file://, etcd://, postgres://.

A file sink with retention (retainFiles, retainHours) holds every change above its
horizon (the highest ts of a retired file), not the full history: only keys changed
above the horizon are compared, and the output adds "horizonTs" and "keysBelowHorizon"
(keys last changed at or below it, not checked; a note on stderr says so). A --at below
the horizon is refused (exit 2).
`;

/** True when every span of backfilled table `t` finished a snapshot of its current backfill at or below `atTs`. */
function backfilledBy(t: TableSpec, atTs: bigint, records: ReadonlyMap<string, BackfillRecord>, prefix: string): boolean {
  if (t.backfillTs === undefined) return true;
  // A snapshot is never below its backfill revision, so this also holds the table back
  // while the checkpoint is below that revision.
  return changefeedSpans({ tables: [t] }).spans.every((span) => {
    const record = records.get(backfillKey(prefix, span));
    return record !== undefined && record.done && isOfGeneration(record, t.backfillTs) && BigInt(record.snapshotTs) <= atTs;
  });
}

/** Tries of a `--changefeed` verify whose checkpoint a retention pass overtook. */
const horizonAttemptsMax = 5;
const horizonRetryMs = 500;

/** What to verify: the URIs, the tables and the ts, with the backfill records of `--changefeed`. */
interface VerifyTarget {
  readonly sourceUri: string;
  readonly sinkUri: string;
  readonly tableSpecs: TableSpec[];
  readonly atTs: bigint;
  readonly records: ReadonlyMap<string, BackfillRecord>;
  readonly recordsPrefix: string;
}

type VerifyValues = Record<string, string | boolean | undefined>;

/** The changefeed's info, persisted checkpoint and backfill records, read from etcd. */
async function readChangefeedTarget(values: VerifyValues): Promise<VerifyTarget> {
  const id = validateId(values.changefeed, '--changefeed');
  const keys = clusterKeys(typeof values.cluster === 'string' ? values.cluster : 'default');
  const { endpoints, security } = metadataEtcdOf(values);
  const client = createEtcdClient({ endpoints, callTimeoutMs: 10_000, security });
  try {
    const info = await client.get(keys.changefeedInfo(id)).string();
    const status = await client.get(keys.changefeedStatus(id)).string();
    if (info === null || status === null) throw new ValidationError(`no changefeed ${id} in cluster ${keys.root}`);
    const parsedInfo = JSON.parse(info) as ChangefeedInfo;
    const tableSpecs = [...parsedInfo.tables];
    let records: ReadonlyMap<string, BackfillRecord> = new Map();
    let recordsPrefix = '';
    if (tableSpecs.some((t) => t.backfillTs !== undefined)) {
      const raw = await client.getAll().prefix(keys.backfillPrefix(id)).strings();
      records = new Map(Object.entries(raw).map(([key, value]) => [key, JSON.parse(value) as BackfillRecord]));
      recordsPrefix = keys.backfillPrefix(id);
    }
    return { sourceUri: parsedInfo.source.uri, sinkUri: parsedInfo.sink.uri, tableSpecs, atTs: BigInt((JSON.parse(status) as ChangefeedStatus).checkpointTs), records, recordsPrefix };
  } finally {
    client.close();
  }
}

function flag(values: VerifyValues, name: string): string | undefined {
  const value = values[name];
  if (value === undefined) return undefined;
  if (typeof value !== 'string' || value === '') throw new ValidationError(`--${name} needs a value`);
  return value;
}

/** The cluster's etcd from `--etcd` and the `--etcd-*` flags, read as spanfeed server reads them. */
function metadataEtcdOf(values: VerifyValues): { endpoints: string[]; security: EtcdSecurity | undefined } {
  const endpoints = (flag(values, 'etcd') ?? '127.0.0.1:2379').split(',').map((e) => e.trim());
  const https = endpoints.filter((e) => e.startsWith('https://')).length;
  if (https > 0 && https < endpoints.length) throw new ValidationError('--etcd endpoints must be all https:// or none');
  const ca = flag(values, 'etcd-ca');
  if (https > 0 && ca === undefined) throw new ValidationError("--etcd https:// endpoints need --etcd-ca (the CA of etcd's server certificate)");
  const cert = flag(values, 'etcd-cert');
  const key = flag(values, 'etcd-key');
  const passwordFile = flag(values, 'etcd-password-file');
  const security = metadataEtcdSecurity({
    etcdTls: ca === undefined ? undefined : { caFile: resolve(ca), certFile: cert === undefined ? undefined : resolve(cert), keyFile: key === undefined ? undefined : resolve(key) },
    etcdUser: flag(values, 'etcd-user'),
    etcdPasswordFile: passwordFile === undefined ? undefined : resolve(passwordFile),
  });
  return { endpoints: endpoints.map((e) => e.replace(/^https?:\/\//, '')), security };
}

/** `--source`, `--sink`, `--tables` and `--at` as given. */
function manualTarget(values: VerifyValues): VerifyTarget {
  if (typeof values.source !== 'string' || typeof values.sink !== 'string' || typeof values.tables !== 'string' || typeof values.at !== 'string') {
    throw new ValidationError('give --changefeed, or all of --source, --sink, --tables and --at');
  }
  let tablesJson: unknown;
  try {
    tablesJson = JSON.parse(values.tables);
  } catch {
    throw new ValidationError('--tables must be a JSON table list');
  }
  return { sourceUri: values.source, sinkUri: values.sink, tableSpecs: parseTables(tablesJson), atTs: parseTs(values.at, '--at'), records: new Map(), recordsPrefix: '' };
}

export async function runVerify(argv: readonly string[]): Promise<number> {
  let values: VerifyValues;
  try {
    values = parseArgs({
      args: [...argv],
      options: {
        changefeed: { type: 'string' },
        etcd: { type: 'string' },
        'etcd-ca': { type: 'string' },
        'etcd-cert': { type: 'string' },
        'etcd-key': { type: 'string' },
        'etcd-user': { type: 'string' },
        'etcd-password-file': { type: 'string' },
        'credentials-root': { type: 'string' },
        cluster: { type: 'string' },
        source: { type: 'string' },
        sink: { type: 'string' },
        tables: { type: 'string' },
        at: { type: 'string' },
        help: { type: 'boolean' },
      },
      strict: true,
    }).values;
  } catch (error) {
    process.stderr.write(redactSecrets(`spanfeed verify: ${(error as Error).message}\n`));
    return 2;
  }
  if (values.help === true) {
    process.stdout.write(verifyUsage);
    return 0;
  }
  try {
    const credentialsRoot = resolve(flag(values, 'credentials-root') ?? serverDefaults.credentialsRoot);
    // With retention, the file sink may retire files past the checkpoint read a moment
    // before (the checkpoint moved on meanwhile): read it again and verify there.
    for (let attempt = 1; ; attempt++) {
      const target = typeof values.changefeed === 'string' ? await readChangefeedTarget(values) : manualTarget(values);
      // The checkpoint claims nothing of a backfilled table until every span of it has its
      // snapshot, at or below the checkpoint, in the sink.
      const { atTs, records, recordsPrefix } = target;
      const pending = target.tableSpecs.filter((t) => t.backfillTs !== undefined && !backfilledBy(t, atTs, records, recordsPrefix));
      const { tables } = changefeedSpans({ tables: target.tableSpecs.filter((t) => !pending.includes(t)) });
      let result;
      try {
        result = await verify(target.sourceUri, target.sinkUri, tables, atTs, { credentialsRoot });
      } catch (error) {
        if (error instanceof RetentionHorizonError && typeof values.changefeed === 'string' && attempt < horizonAttemptsMax) {
          await sleepFor(horizonRetryMs);
          continue;
        }
        throw error;
      }
      const { atTs: at, tables: checked, ...counts } = result;
      if (result.horizonTs !== undefined) {
        process.stderr.write(
          `spanfeed verify: the file sink's retention retired files up to ts ${result.horizonTs}: only keys changed above it are compared; ${result.keysBelowHorizon ?? 0} keys last changed at or below it are not checked\n`,
        );
      }
      process.stdout.write(`${JSON.stringify({ atTs: at, tables: checked, tablesPending: pending.length, ...counts })}\n`);
      return result.missing === 0 && result.mismatched === 0 && result.extra === 0 ? 0 : 1;
    }
  } catch (error) {
    process.stderr.write(redactSecrets(`spanfeed verify: ${(error as Error).message}\n`));
    return 2;
  }
}
