/**
 * The bounds on sources and sinks: file sink paths (realpath checks on a real temp dir),
 * table names, metadata-prefix ranges, the endpoint allowlist, and URI redaction.
 */
import { mkdirSync, mkdtempSync, realpathSync, rmSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  BoundsError,
  checkFileSinkDir,
  endpointAllowed,
  endpointsOverlap,
  mirrorTouchesPrefix,
  parseAllowedEndpoints,
  rangeTouchesPrefix,
  tableNameProblem,
} from '../../src/pipeline/bounds.ts';
import { checkChangefeedBounds } from '../../src/pipeline/guard.ts';
import type { PipelineBounds } from '../../src/pipeline/bounds.ts';
import { redactSecrets, redactUri } from '../../src/pipeline/redact.ts';
import { validateSinkUri } from '../../src/pipeline/registry.ts';
import { BadUriError } from '../../src/pipeline/uri.ts';
import { parsePostgresSinkUri } from '../../src/pipeline/sinks/postgres.ts';
import { parseCreateRequest } from '../../src/server/changefeed-info.ts';

describe('redaction', () => {
  it('hides the password of a URI and keeps the rest', () => {
    expect(redactUri('postgres://user:s3cret@127.0.0.1:1/db')).toBe('postgres://user:***@127.0.0.1:1/db');
    expect(redactUri('postgresql://u:p%40ss@h/db?poolMax=2')).toBe('postgresql://u:***@h/db?poolMax=2');
    expect(redactUri('postgres://user@h/db?passwordFile=/run/pw')).toBe('postgres://user@h/db?passwordFile=/run/pw');
    expect(redactUri('postgres://h/db?sslmode=require&password=s3cret')).toBe('postgres://h/db?sslmode=require&password=***');
    expect(redactUri('file:///tmp/out?maxFileBytes=1024')).toBe('file:///tmp/out?maxFileBytes=1024');
    expect(redactUri('etcd://127.0.0.1:2379,127.0.0.1:2380/mirror/')).toBe('etcd://127.0.0.1:2379,127.0.0.1:2380/mirror/');
  });

  it('finds URIs inside any text, JSON included, and is idempotent', () => {
    const text = JSON.stringify({ sink: { uri: 'postgres://a:s3cret@h:5432/d' }, error: 'sink uri "postgres://b:t0p@x/y" is bad' });
    const once = redactSecrets(text);
    expect(once).not.toContain('s3cret');
    expect(once).not.toContain('t0p');
    expect(once).toContain('postgres://a:***@h:5432/d');
    expect(redactSecrets(once)).toBe(once);
    const quoted = JSON.stringify({ uri: 'postgres://u:a"b\\c@h/d' });
    expect(redactSecrets(quoted)).toBe(JSON.stringify({ uri: 'postgres://u:***@h/d' }));
  });

  it('BadUriError messages carry no password', () => {
    expect(() => validateSinkUri('postgres://user:s3cret@/db')).toThrow(BadUriError);
    try {
      parseCreateRequest({ id: 'x', source: { uri: 'datagen://' }, sink: { uri: 'postgres://user:s3cret@h/db?poolMax=0' }, tables: [{ name: 't' }] });
      expect.unreachable();
    } catch (error) {
      expect((error as Error).message).not.toContain('s3cret');
    }
  });

  it('the postgres sink takes a password file, and no password beside it', () => {
    expect(parsePostgresSinkUri('postgres://u@h/db?passwordFile=/run/secrets/pg')).toMatchObject({ passwordFile: '/run/secrets/pg', connectionString: 'postgres://u@h/db' });
    expect(() => parsePostgresSinkUri('postgres://u:p@h/db?passwordFile=/run/pw')).toThrow(/either a password or passwordFile/);
    expect(() => parsePostgresSinkUri('postgres://u@h/db?passwordFile=rel')).toThrow(/absolute path/);
    expect(() => parsePostgresSinkUri('postgres://u@h/db?passwordFile=/proc/self/environ')).toThrow(/outside \/proc/);
    expect(() => parsePostgresSinkUri('postgres://u@h/db?host=evil')).toThrow(/"host" is not allowed/);
  });
});

describe('table names and key ranges', () => {
  it('refuses table names that are not one path segment', () => {
    for (const name of ['', '.', '..', 'a/b', 'a\\b', 'a\u0000b', '../x']) expect(tableNameProblem(name)).toBeDefined();
    for (const name of ['orders', 'a.b', '..a', 'x-1_2']) expect(tableNameProblem(name)).toBeUndefined();
    // The API's table name rule is stricter still.
    for (const name of ['..', 'a/b', 'a\\b', '.', '']) {
      expect(() => parseCreateRequest({ id: 'x', source: { uri: 'datagen://' }, sink: { uri: 'blackhole://' }, tables: [{ name }] })).toThrow(/tables\[0\]\.name/);
    }
  });

  it('tells which ranges reach under the metadata prefix', () => {
    const p = '/spanfeed/';
    expect(rangeTouchesPrefix('orders/', 'orders0', p)).toBe(false);
    expect(rangeTouchesPrefix('/spanfeed/', '/spanfeed0', p)).toBe(true);
    expect(rangeTouchesPrefix('/spanfeed/default/', '/spanfeed/default0', p)).toBe(true);
    expect(rangeTouchesPrefix('', '', p)).toBe(true);
    expect(rangeTouchesPrefix('/', '/spanfeed/', p)).toBe(false);
    expect(rangeTouchesPrefix('/spanfeed-mirror', '', p)).toBe(true);
    expect(rangeTouchesPrefix('/spanfeed0', '', p)).toBe(false);
    expect(mirrorTouchesPrefix('/spanfeed/x/', 'a/', 'a0', p)).toBe(true);
    expect(mirrorTouchesPrefix('/', 'orders/', 'orders0', p)).toBe(false);
    expect(mirrorTouchesPrefix('/', 'spanfeed/', 'spanfeed0', p)).toBe(true);
    expect(mirrorTouchesPrefix('/span', 'feed/', 'feed0', p)).toBe(true);
    expect(mirrorTouchesPrefix('mirror/', '', '', p)).toBe(false);
  });
});

describe('allowed endpoints', () => {
  it('matches hosts, ports, domains and CIDR blocks as written', () => {
    const allowed = parseAllowedEndpoints('db.internal:5432, etcd1, *.corp.example, 10.1.0.0/16, 127.0.0.1:2379, [::1]');
    expect(endpointAllowed(allowed, 'db.internal', 5432)).toBe(true);
    expect(endpointAllowed(allowed, 'db.internal', 5433)).toBe(false);
    expect(endpointAllowed(allowed, 'ETCD1', 1)).toBe(true);
    expect(endpointAllowed(allowed, 'a.corp.example', 2379)).toBe(true);
    expect(endpointAllowed(allowed, 'corp.example.evil', 2379)).toBe(false);
    expect(endpointAllowed(allowed, '10.1.200.3', 5432)).toBe(true);
    expect(endpointAllowed(allowed, '10.2.0.1', 5432)).toBe(false);
    expect(endpointAllowed(allowed, 'localhost', 2379)).toBe(true);
    expect(endpointAllowed(allowed, '127.0.0.1', 2380)).toBe(false);
    expect(endpointAllowed(allowed, '[::1]', 5432)).toBe(true);
    expect(() => parseAllowedEndpoints('a b')).toThrow(/must be host/);
    expect(() => parseAllowedEndpoints('10.0.0.0/40')).toThrow(/CIDR/);
    expect(() => parseAllowedEndpoints(' , ')).toThrow(/at least one/);
  });

  it('tells endpoint lists that share an endpoint', () => {
    expect(endpointsOverlap(['localhost:2379'], ['127.0.0.1:2379'])).toBe(true);
    expect(endpointsOverlap(['127.0.0.1:2380'], ['http://127.0.0.1:2380'])).toBe(true);
    expect(endpointsOverlap(['127.0.0.1:2380'], ['127.0.0.1:2379'])).toBe(false);
  });
});

describe('file sink paths', () => {
  let base: string;
  let root: string;
  let outside: string;

  beforeAll(() => {
    base = realpathSync(mkdtempSync(join(tmpdir(), 'spanfeed-bounds-')));
    root = join(base, 'root');
    outside = join(base, 'outside');
    mkdirSync(join(root, 'inside'), { recursive: true });
    mkdirSync(outside);
    symlinkSync(outside, join(root, 'out-link'));
    symlinkSync(join(root, 'inside'), join(base, 'root-link'));
    symlinkSync(join(base, 'missing'), join(root, 'dangling'));
  });

  afterAll(() => rmSync(base, { recursive: true, force: true }));

  it('accepts the root and directories under it, existing or not', async () => {
    expect(await checkFileSinkDir(root, root)).toBe(root);
    expect(await checkFileSinkDir(join(root, 'inside'), root)).toBe(join(root, 'inside'));
    expect(await checkFileSinkDir(join(root, 'new', 'deeper'), root)).toBe(join(root, 'new', 'deeper'));
    // A root given through a symlink is resolved first.
    expect(await checkFileSinkDir(join(root, 'inside', 'x'), join(base, 'root-link'))).toBe(join(root, 'inside', 'x'));
  });

  it('refuses paths outside the root, symlinks out of it, and /proc, /sys, /dev', async () => {
    for (const dir of [outside, join(outside, 'x'), '/etc', join(root, 'out-link'), join(root, 'out-link', 'new'), join(root, 'dangling'), '/proc/self', '/sys/kernel', '/dev/shm']) {
      await expect(checkFileSinkDir(dir, root), dir).rejects.toThrow(BoundsError);
    }
    await expect(checkFileSinkDir(join(root, 'out-link'), root)).rejects.toThrow(/outside --file-sink-root .* resolves to/);
    await expect(checkFileSinkDir('/proc/self/cwd', '/')).rejects.toThrow(/under \/proc/);
  });

  it('refuses `.` and `..` segments and relative file URIs when parsing', () => {
    for (const uri of [`file://${root}/../outside`, `file://${root}/./x`, `file://${root}/%2e%2e/outside`, 'file:rel', 'file://rel', 'file:///a\\b']) {
      expect(() => validateSinkUri(uri), uri).toThrow(BadUriError);
    }
  });

  it('checks a changefeed: file sink under the root, own etcd never under /spanfeed/', async () => {
    const bounds: PipelineBounds = {
      fileSinkRoot: root,
      allowedEndpoints: parseAllowedEndpoints('127.0.0.1'),
      metadata: { endpoints: ['127.0.0.1:2379'], clusterId: async () => 'c1' },
      credentialsRoot: root,
    };
    const orders = [{ table: 'orders', start: 'orders/', end: 'orders0' }];
    await checkChangefeedBounds('datagen://', `file://${root}/cf`, orders, bounds);
    await expect(checkChangefeedBounds('datagen://', `file://${outside}`, orders, bounds)).rejects.toThrow(/outside --file-sink-root/);
    await checkChangefeedBounds('etcd://127.0.0.1:2379', 'blackhole://', orders, bounds);
    await expect(checkChangefeedBounds('etcd://localhost:2379', 'blackhole://', [{ table: 'meta', start: '/spanfeed/', end: '/spanfeed0' }], bounds)).rejects.toThrow(/own etcd.*under \/spanfeed\//);
    await expect(checkChangefeedBounds('datagen://', 'etcd://127.0.0.1:2379//spanfeed/default/', orders, bounds)).rejects.toThrow(/own etcd/);
    // The target prefix is what follows the first slash: this one is "spanfeed/...", not "/spanfeed/...".
    await checkChangefeedBounds('datagen://', 'etcd://127.0.0.1:2379/spanfeed/default/', orders, bounds);
    await expect(checkChangefeedBounds('etcd://10.9.9.9:2379', 'blackhole://', orders, bounds)).rejects.toThrow(/--allowed-endpoints/);
    await expect(checkChangefeedBounds('datagen://', 'postgres://u:s3cret@db.evil:5432/d', orders, bounds)).rejects.toThrow(/may not reach db.evil:5432/);
  });
});
