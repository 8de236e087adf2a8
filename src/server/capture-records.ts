/**
 * Which keys under `/captures/` are live captures. A capture writes its record under its
 * session lease, so the record vanishes with the capture. A record without a lease (put by
 * hand, or by a changefeed whose sink is the cluster's own etcd) has no capture behind it
 * that could ever answer, yet the owner waits for every capture's first heartbeat answer:
 * one such key would stop every changefeed forever. So only leased records that validate
 * for their key count; the rest are reported for the caller to log.
 */
import type { IKeyValue } from 'etcd3';
import type { CaptureRecord } from './owner-role.ts';

/** A key under the captures prefix that is not a live capture, and why. */
export interface IgnoredCaptureRecord {
  readonly key: string;
  /** Changes when the key is written again: the caller logs each version once. */
  readonly modRevision: string;
  readonly reason: 'no-lease' | 'invalid';
  readonly detail: string;
}

/** The live captures among `kvs`, and the keys ignored. */
export interface CaptureRecords {
  readonly captures: Map<string, CaptureRecord>;
  readonly ignored: IgnoredCaptureRecord[];
}

/** Reads the captures prefix (`prefix` ends in `/`). */
export function readCaptureRecords(kvs: readonly IKeyValue[], prefix: string): CaptureRecords {
  const captures = new Map<string, CaptureRecord>();
  const ignored: IgnoredCaptureRecord[] = [];
  for (const kv of kvs) {
    const key = kv.key.toString();
    const ignore = (reason: IgnoredCaptureRecord['reason'], detail: string): void => {
      ignored.push({ key, modRevision: kv.mod_revision, reason, detail });
    };
    // etcd reports "no lease" as lease 0; a key whose lease expired is already gone.
    if (kv.lease === '0' || kv.lease === '') {
      ignore('no-lease', 'written without a lease');
      continue;
    }
    const problem = recordProblem(kv.value.toString(), key.slice(prefix.length));
    if (typeof problem === 'string') ignore('invalid', problem);
    else captures.set(problem.id, problem);
  }
  return { captures, ignored };
}

/** The record, or what is wrong with it. */
function recordProblem(text: string, idFromKey: string): CaptureRecord | string {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    return 'not JSON';
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) return 'not a JSON object';
  const record = value as Record<string, unknown>;
  if (record.id !== idFromKey) return `id ${JSON.stringify(record.id)} is not the key's ${JSON.stringify(idFromKey)}`;
  for (const field of ['grpcAddr', 'httpAddr'] as const) {
    if (!isHostPort(record[field])) return `${field} must be host:port, got ${JSON.stringify(record[field])}`;
  }
  for (const field of ['version', 'startedAt'] as const) {
    if (typeof record[field] !== 'string') return `${field} must be a string`;
  }
  return { id: idFromKey, grpcAddr: record.grpcAddr as string, httpAddr: record.httpAddr as string, version: record.version as string, startedAt: record.startedAt as string };
}

/** `host:port` as captures register it (a name, an IPv4 address or a bracketed IPv6 one). */
function isHostPort(value: unknown): boolean {
  if (typeof value !== 'string') return false;
  const match = /^([a-zA-Z0-9.-]+|\[[0-9a-fA-F:]+\]):(\d{1,5})$/.exec(value);
  return match !== null && Number(match[2]) <= 65535;
}
