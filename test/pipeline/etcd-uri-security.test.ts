/**
 * TLS and user/password of etcd sources and sinks: the URI parameters (`ca`, `cert`,
 * `key`, `user`, `passwordFile`) and their refusals, the `--credentials-root` check on a
 * real temp dir (symlinks, `..`, /proc), reading the files into an EtcdSecurity (real
 * certificates from openssl), and password files.
 */
import { mkdirSync, mkdtempSync, realpathSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { PipelineBounds } from '../../src/pipeline/bounds.ts';
import { BoundsError, checkCredentialFile } from '../../src/pipeline/bounds.ts';
import { credentialPathProblem, loadEtcdUriSecurity } from '../../src/pipeline/etcd-uri-security.ts';
import { checkChangefeedBounds } from '../../src/pipeline/guard.ts';
import { redactUri } from '../../src/pipeline/redact.ts';
import { validateSinkUri, validateSourceUri } from '../../src/pipeline/registry.ts';
import { parseEtcdSinkUri } from '../../src/pipeline/sinks/etcd.ts';
import { parsePostgresSinkUri } from '../../src/pipeline/sinks/postgres.ts';
import { parseEtcdSourceUri } from '../../src/pipeline/sources/etcd.ts';
import { BadUriError } from '../../src/pipeline/uri.ts';
import { EtcdSecurityError, metadataEtcdSecurity } from '../../src/security/etcd-security.ts';
import { PasswordFileError, readPasswordFileSync } from '../../src/security/password-file.ts';
import { parseCreateRequest } from '../../src/server/changefeed-info.ts';
import type { TestCerts } from '../integration/test-certs.ts';
import { makeTestCerts } from '../integration/test-certs.ts';

describe('etcd URI security parameters', () => {
  it('parses ca, cert, key, user and passwordFile on sources and sinks', () => {
    const params = 'ca=/c/ca.pem&cert=/c/client.pem&key=/c/client-key.pem&user=reader&passwordFile=/c/pw';
    const security = { caFile: '/c/ca.pem', certFile: '/c/client.pem', keyFile: '/c/client-key.pem', user: 'reader', passwordFile: '/c/pw' };
    expect(parseEtcdSourceUri(`etcd://127.0.0.1:2379?${params}&progress=notify`)).toMatchObject({ endpoints: ['127.0.0.1:2379'], progress: 'notify', security });
    expect(parseEtcdSinkUri(`etcd://h1:2379/mirror/?${params}&txnsInFlightMax=8`)).toMatchObject({ endpoints: ['h1:2379'], targetPrefix: 'mirror/', txnsInFlightMax: 8, security });
    expect(parseEtcdSourceUri('etcd://127.0.0.1:2379?ca=/c/ca.pem').security).toEqual({ caFile: '/c/ca.pem', certFile: undefined, keyFile: undefined, user: undefined, passwordFile: undefined });
    expect(parseEtcdSourceUri('etcd://127.0.0.1:2379?user=u&passwordFile=/c/pw').security).toMatchObject({ caFile: undefined, user: 'u', passwordFile: '/c/pw' });
    expect(parseEtcdSourceUri('etcd://127.0.0.1:2379').security).toBeUndefined();
    // Several hosts (which a WHATWG URL alone refuses), with parameters.
    expect(parseEtcdSourceUri(`etcd://h1:2379,h2:2380,h3:2381?${params}`)).toMatchObject({ endpoints: ['h1:2379', 'h2:2380', 'h3:2381'], security });
    expect(parseEtcdSinkUri(`etcd://h1:2379,h2:2380/mirror/?${params}`)).toMatchObject({ endpoints: ['h1:2379', 'h2:2380'], targetPrefix: 'mirror/', security });
    expect(() => parseEtcdSourceUri('etcd://u:s3cret@h1:2379,h2:2379')).toThrow(/must not hold a user or password/);
    expect(parseEtcdSinkUri('etcd://127.0.0.1:2379/m/').security).toBeUndefined();
  });

  it('refuses passwords in the URI, pointing at passwordFile, without repeating them', () => {
    for (const uri of ['etcd://reader:s3cret@127.0.0.1:2379', 'etcd://reader@127.0.0.1:2379']) {
      expect(() => parseEtcdSourceUri(uri)).toThrow(/must not hold a user or password .*passwordFile=/);
      expect(() => parseEtcdSinkUri(`${uri}/m/`)).toThrow(/must not hold a user or password .*passwordFile=/);
    }
    for (const name of ['password', 'pwd', 'passwd', 'pass']) {
      expect(() => parseEtcdSourceUri(`etcd://127.0.0.1:2379?user=u&${name}=s3cret`), name).toThrow(new RegExp(`parameter "${name}" is not allowed.*passwordFile=`));
    }
    try {
      parseCreateRequest({ id: 'x', source: { uri: 'etcd://u:s3cret@127.0.0.1:2379' }, sink: { uri: 'blackhole://' }, tables: [{ name: 't' }] });
      expect.unreachable();
    } catch (error) {
      expect((error as Error).name).toBe('ValidationError');
      expect((error as Error).message).not.toContain('s3cret');
    }
  });

  it('refuses parameters that do not pair up, bad users, bad paths and unknown parameters', () => {
    const refusals: [string, RegExp][] = [
      ['cert=/c/a.pem&ca=/c/ca.pem', /cert and key go together/],
      ['key=/c/k.pem&ca=/c/ca.pem', /cert and key go together/],
      ['cert=/c/a.pem&key=/c/k.pem', /cert needs ca/],
      ['user=u', /user and passwordFile go together/],
      ['passwordFile=/c/pw', /user and passwordFile go together/],
      ['user=a%20b&passwordFile=/c/pw', /user must be 1-128 printable characters/],
      ['ca=relative.pem', /ca="relative.pem" must be an absolute path/],
      ['ca=/c/../etc/ca.pem', /ca=.*must not contain "\.", "\.\." segments/],
      ['ca=/c/./ca.pem', /must not contain "\.", "\.\." segments/],
      ['user=u&passwordFile=/proc/self/environ', /passwordFile=.*outside \/proc, \/sys and \/dev/],
      ['key=/dev/stdin&cert=/c/a.pem&ca=/c/ca.pem', /key=.*outside \/proc/],
      ['caFile=/c/ca.pem', /parameter "caFile" is not known/],
      ['ca=/c/a.pem&ca=/c/b.pem', /parameter "ca" is given more than once/],
    ];
    for (const [params, message] of refusals) {
      expect(() => validateSourceUri(`etcd://127.0.0.1:2379?${params}`), params).toThrow(message);
      expect(() => validateSinkUri(`etcd://127.0.0.1:2379/m/?${params}`), params).toThrow(message);
      expect(() => validateSourceUri(`etcd://127.0.0.1:2379?${params}`), params).toThrow(BadUriError);
    }
  });

  it('applies the same path rules to the postgres passwordFile', () => {
    expect(credentialPathProblem('/run/secrets/pg')).toBeUndefined();
    expect(() => parsePostgresSinkUri('postgres://u@h/db?passwordFile=/run/../etc/shadow')).toThrow(/must not contain "\.", "\.\." segments/);
    expect(() => parsePostgresSinkUri('postgres://u@h/db?passwordFile=/sys/x')).toThrow(/outside \/proc, \/sys and \/dev/);
  });

  it('keeps file paths and user names visible when redacting', () => {
    const uri = 'etcd://127.0.0.1:2379?ca=/c/ca.pem&user=reader&passwordFile=/c/pw';
    expect(redactUri(uri)).toBe(uri);
  });
});

describe('credential files under --credentials-root', () => {
  let base: string;
  let root: string;
  let certs: TestCerts;

  beforeAll(() => {
    base = realpathSync(mkdtempSync(join(tmpdir(), 'spanfeed-creds-')));
    root = join(base, 'creds');
    mkdirSync(join(root, 'sub'), { recursive: true });
    mkdirSync(join(base, 'outside'));
    certs = makeTestCerts(join(base, 'outside'), ['client', 'other']);
    writeFileSync(join(root, 'pw'), 'the-password\nsecond line\n');
    writeFileSync(join(root, 'empty-pw'), '\n');
    writeFileSync(join(base, 'outside', 'pw'), 'outside\n');
    symlinkSync(join(base, 'outside', 'pw'), join(root, 'out-link'));
    symlinkSync(join(root, 'pw'), join(root, 'sub', 'in-link'));
    symlinkSync(join(base, 'missing'), join(root, 'dangling'));
    symlinkSync(join(base, 'outside'), join(root, 'dir-link'));
  });

  afterAll(() => rmSync(base, { recursive: true, force: true }));

  it('accepts regular files under the root, also through symlinks that stay in it', async () => {
    expect(await checkCredentialFile(join(root, 'pw'), root, 'passwordFile')).toBe(join(root, 'pw'));
    expect(await checkCredentialFile(join(root, 'sub', 'in-link'), root, 'passwordFile')).toBe(join(root, 'pw'));
  });

  it('refuses files outside, symlinks out, dangling links, directories, missing files and a missing root', async () => {
    const refusals: [string, string, RegExp][] = [
      [join(base, 'outside', 'pw'), root, /parameter ca .*outside --credentials-root/],
      [join(root, 'out-link'), root, /outside --credentials-root .*resolves to/],
      [join(root, 'dir-link', 'pw'), root, /outside --credentials-root .*resolves to/],
      [join(root, 'dangling'), root, /dangling symlink/],
      [join(root, 'sub'), root, /is not a regular file/],
      [join(root, 'nothing'), root, /cannot be read/],
      ['/proc/self/environ', '/', /under \/proc/],
      [join(root, 'pw'), join(base, 'no-root'), /--credentials-root .*cannot be resolved/],
    ];
    for (const [path, credentialsRoot, message] of refusals) {
      const check = checkCredentialFile(path, credentialsRoot, 'ca');
      await expect(check, path).rejects.toThrow(BoundsError);
      await expect(checkCredentialFile(path, credentialsRoot, 'ca'), path).rejects.toThrow(message);
    }
  });

  it('reads the files of a URI into an EtcdSecurity once they pass', async () => {
    for (const [from, to] of [[certs.ca, 'ca.pem'], [(certs.certs.client as { cert: string }).cert, 'client.pem'], [(certs.certs.client as { key: string }).key, 'client-key.pem'], [(certs.certs.other as { key: string }).key, 'other-key.pem']] as const) {
      writeFileSync(join(root, to), await import('node:fs').then((fs) => fs.readFileSync(from)));
    }
    const files = { caFile: join(root, 'ca.pem'), certFile: join(root, 'client.pem'), keyFile: join(root, 'client-key.pem'), user: 'reader', passwordFile: join(root, 'pw') };
    const security = await loadEtcdUriSecurity(files, root);
    expect(security?.auth).toEqual({ user: 'reader', password: 'the-password' });
    expect(security?.tls?.ca.toString()).toContain('BEGIN CERTIFICATE');
    expect(security?.tls?.key?.toString()).toContain('PRIVATE KEY');
    expect(await loadEtcdUriSecurity(undefined, root)).toBeUndefined();
    await expect(loadEtcdUriSecurity({ ...files, keyFile: join(root, 'other-key.pem') }, root)).rejects.toThrow(/parameter key .*other-key.pem is not the key of parameter cert/);
    await expect(loadEtcdUriSecurity({ ...files, caFile: join(root, 'pw') }, root)).rejects.toThrow(/parameter ca .* is not a PEM certificate/);
    await expect(loadEtcdUriSecurity({ ...files, passwordFile: join(root, 'empty-pw') }, root)).rejects.toThrow(/parameter passwordFile .*empty/);
    await expect(loadEtcdUriSecurity({ ...files, caFile: certs.ca }, root)).rejects.toThrow(/outside --credentials-root/);
    await expect(loadEtcdUriSecurity(files, undefined)).rejects.toThrow(/no --credentials-root is set/);
    for (const error of await Promise.allSettled([loadEtcdUriSecurity({ ...files, caFile: join(root, 'pw') }, root)])) {
      expect(String((error as PromiseRejectedResult).reason)).not.toContain('the-password');
    }
  });

  it('checks credential files when a changefeed is created', async () => {
    const bounds: PipelineBounds = { fileSinkRoot: base, allowedEndpoints: undefined, metadata: { endpoints: ['127.0.0.1:1'], clusterId: async () => 'c1' }, credentialsRoot: root };
    const tables = [{ table: 't', start: 't/', end: 't0' }];
    await expect(checkChangefeedBounds(`etcd://127.0.0.1:1?ca=${join(base, 'outside', 'pw')}`, 'blackhole://', tables, bounds)).rejects.toThrow(/parameter ca .*outside --credentials-root/);
    await expect(checkChangefeedBounds('datagen://', `etcd://127.0.0.1:1/m/?user=u&passwordFile=${join(root, 'out-link')}`, tables, bounds)).rejects.toThrow(/parameter passwordFile .*resolves to/);
    await expect(checkChangefeedBounds('datagen://', `postgres://u@127.0.0.1:1/db?passwordFile=${join(base, 'outside', 'pw')}`, tables, bounds)).rejects.toThrow(/parameter passwordFile .*outside --credentials-root/);
    await checkChangefeedBounds('datagen://', `postgres://u@127.0.0.1:1/db?passwordFile=${join(root, 'pw')}`, tables, bounds);
  });
});

describe('password files and the metadata etcd flags', () => {
  let dir: string;

  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), 'spanfeed-pw-'));
  });

  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('reads the first line, bounded, and refuses empty, missing and non-regular files', () => {
    writeFileSync(join(dir, 'pw'), 'secret-1\r\nnext\n');
    expect(readPasswordFileSync('--etcd-password-file', join(dir, 'pw'))).toBe('secret-1');
    writeFileSync(join(dir, 'long'), `${'x'.repeat(5000)}\n`);
    expect(readPasswordFileSync('--etcd-password-file', join(dir, 'long'))).toHaveLength(4096);
    writeFileSync(join(dir, 'empty'), '');
    expect(() => readPasswordFileSync('--etcd-password-file', join(dir, 'empty'))).toThrow(/--etcd-password-file .*empty: its first line \(the password\) is empty/);
    expect(() => readPasswordFileSync('--etcd-password-file', join(dir, 'missing'))).toThrow(/--etcd-password-file .*missing cannot be read/);
    expect(() => readPasswordFileSync('--etcd-password-file', dir)).toThrow(PasswordFileError);
  });

  it('names the flag of a bad metadata etcd file, never the password', () => {
    writeFileSync(join(dir, 'pw2'), 'hunter2-secret\n');
    expect(metadataEtcdSecurity({ etcdTls: undefined, etcdUser: undefined, etcdPasswordFile: undefined })).toBeUndefined();
    expect(metadataEtcdSecurity({ etcdTls: undefined, etcdUser: 'u', etcdPasswordFile: join(dir, 'pw2') })).toEqual({ auth: { user: 'u', password: 'hunter2-secret' } });
    const bad = () => metadataEtcdSecurity({ etcdTls: { caFile: join(dir, 'pw2'), certFile: undefined, keyFile: undefined }, etcdUser: 'u', etcdPasswordFile: join(dir, 'pw2') });
    expect(bad).toThrow(EtcdSecurityError);
    expect(bad).toThrow(/^--etcd-ca .*pw2 is not a PEM certificate/);
    try {
      bad();
    } catch (error) {
      expect((error as Error).message).not.toContain('hunter2');
    }
    expect(() => metadataEtcdSecurity({ etcdTls: { caFile: join(dir, 'missing.pem'), certFile: undefined, keyFile: undefined }, etcdUser: undefined, etcdPasswordFile: undefined })).toThrow(/--etcd-ca .*missing.pem cannot be read/);
  });
});
