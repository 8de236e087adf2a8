/**
 * The TLS and etcd-credential settings of `spanfeed server`: which go together, which
 * need which, and the refusal to serve gRPC in plain text off loopback unasked. Also the
 * TLS file checks (real certificates from `spanfeed certs create`).
 */
import { X509Certificate } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ConfigError, parseServerConfig } from '../../src/server/server-config.ts';
import { CaptureTls } from '../../src/security/capture-tls.ts';
import { TlsFileError, certificateNames, peerNameAllowed, readTlsMaterial } from '../../src/security/tls-files.ts';
import { makeTestCerts } from '../integration/test-certs.ts';

const dir = mkdtempSync(join(tmpdir(), 'spanfeed-config-tls-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
const tls = ['--tls-ca', '/ca', '--tls-cert', '/cert', '--tls-key', '/key'];

describe('server config: TLS and etcd credentials', () => {
  it('takes the three TLS files together or not at all', () => {
    expect(parseServerConfig([], {}).tls).toBeUndefined();
    expect(parseServerConfig(tls, {}).tls).toEqual({ caFile: '/ca', certFile: '/cert', keyFile: '/key' });
    expect(parseServerConfig([], { SPANFEED_TLS_CA: '/a', SPANFEED_TLS_CERT: '/b', SPANFEED_TLS_KEY: '/c' }).tls).toEqual({ caFile: '/a', certFile: '/b', keyFile: '/c' });
    expect(() => parseServerConfig(['--tls-ca', '/ca', '--tls-cert', '/cert'], {})).toThrow(/--tls-ca, --tls-cert and --tls-key go together/);
    expect(() => parseServerConfig(['--tls-allowed-names', 'a'], {})).toThrow(/--tls-allowed-names needs --tls-ca/);
  });

  it('parses allowed names and client roles, and keeps the two lists apart', () => {
    const config = parseServerConfig([...tls, '--tls-allowed-names', 'c1, c2', '--tls-client-roles', 'ops=admin,dash=read'], {});
    expect([...(config.tlsAllowedNames ?? [])]).toEqual(['c1', 'c2']);
    expect([...(config.tlsClientRoles ?? new Map())]).toEqual([['ops', 'admin'], ['dash', 'read']]);
    expect(() => parseServerConfig([...tls, '--tls-client-roles', 'ops=admin'], {})).toThrow(/--tls-client-roles needs --tls-allowed-names/);
    expect(() => parseServerConfig([...tls, '--tls-allowed-names', 'c1,ops', '--tls-client-roles', 'ops=admin'], {})).toThrow(/ops may not be both/);
    expect(() => parseServerConfig([...tls, '--tls-allowed-names', 'c1', '--tls-client-roles', 'ops=root'], {})).toThrow(/name=read or name=admin/);
    expect(() => parseServerConfig([...tls, '--tls-allowed-names', 'c1', '--tls-client-roles', 'ops=read,ops=admin'], {})).toThrow(/names ops twice/);
    expect(() => parseServerConfig([...tls, '--tls-allowed-names', 'bad name'], {})).toThrow(ConfigError);
    expect(() => parseServerConfig([...tls, '--tls-allowed-names', ','], {})).toThrow(/at least one name/);
  });

  it('serves the API off loopback with client-certificate roles as its auth, and gRPC off loopback only with TLS or --insecure', () => {
    expect(parseServerConfig([...tls, '--tls-allowed-names', 'c1', '--tls-client-roles', 'ops=admin', '--http', '0.0.0.0:8080'], {}).httpAddr).toBe('0.0.0.0:8080');
    expect(() => parseServerConfig(['--grpc', '0.0.0.0:9000'], {})).toThrow(/--grpc 0\.0\.0\.0:9000 is not a loopback address and no --tls-ca/);
    expect(parseServerConfig(['--grpc', '0.0.0.0:9000', '--insecure'], {}).grpcAddr).toBe('0.0.0.0:9000');
    expect(parseServerConfig([...tls, '--grpc', '0.0.0.0:9000'], {}).grpcAddr).toBe('0.0.0.0:9000');
  });

  it('takes https etcd endpoints with a CA, a client certificate in pairs, and a user with a password file', () => {
    const config = parseServerConfig(['--etcd', 'https://e1:2379,https://e2:2379', '--etcd-ca', '/eca', '--etcd-cert', '/ec', '--etcd-key', '/ek', '--etcd-user', 'spanfeed', '--etcd-password-file', '/pw'], {});
    expect(config).toMatchObject({ etcdEndpoints: ['e1:2379', 'e2:2379'], etcdTls: { caFile: '/eca', certFile: '/ec', keyFile: '/ek' }, etcdUser: 'spanfeed', etcdPasswordFile: '/pw' });
    expect(parseServerConfig(['--etcd-ca', '/eca'], {}).etcdTls).toEqual({ caFile: '/eca', certFile: undefined, keyFile: undefined });
    expect(() => parseServerConfig(['--etcd', 'https://e1:2379'], {})).toThrow(/need --etcd-ca/);
    expect(() => parseServerConfig(['--etcd', 'https://e1:2379,e2:2379', '--etcd-ca', '/eca'], {})).toThrow(/all https:\/\/ or none/);
    expect(() => parseServerConfig(['--etcd-ca', '/eca', '--etcd-cert', '/ec'], {})).toThrow(/--etcd-cert and --etcd-key go together/);
    expect(() => parseServerConfig(['--etcd-cert', '/ec', '--etcd-key', '/ek'], {})).toThrow(/--etcd-cert needs --etcd-ca/);
    expect(() => parseServerConfig(['--etcd-user', 'u'], {})).toThrow(/--etcd-user and --etcd-password-file go together/);
    expect(() => parseServerConfig(['--etcd-user', 'a b', '--etcd-password-file', '/pw'], {})).toThrow(/--etcd-user must be/);
  });
});

describe('TLS files', () => {
  const certs = join(dir, 'certs');
  const other = join(dir, 'other');
  beforeAll(() => {
    makeTestCerts(certs, ['c1', 'c2', 'ops']);
    makeTestCerts(other, ['c1']);
  }, 60_000);
  const files = (name: string, from = certs, ca = certs) => ({ caFile: join(ca, 'ca.pem'), certFile: join(from, `${name}.pem`), keyFile: join(from, `${name}-key.pem`) });

  it('reads a matching set, and names the file that does not fit', () => {
    const material = readTlsMaterial('--tls', files('c1'));
    expect(material.names).toContain('c1');
    expect(() => readTlsMaterial('--tls', { ...files('c1'), keyFile: join(certs, 'c2-key.pem') })).toThrow(/--tls-key .*c2-key\.pem is not the key of --tls-cert/);
    expect(() => readTlsMaterial('--tls', files('c1', other))).toThrow(/--tls-cert .* is not signed by --tls-ca/);
    expect(() => readTlsMaterial('--tls', { ...files('c1'), caFile: join(dir, 'missing.pem') })).toThrow(/--tls-ca .*missing\.pem cannot be read/);
    expect(() => readTlsMaterial('--tls', { ...files('c1'), certFile: join(certs, 'c1-key.pem') })).toThrow(TlsFileError);
    // A later "now" than every certificate's end: expired.
    expect(() => readTlsMaterial('--tls', files('c1'), new Date('2200-01-01'))).toThrow(/expired/);
  });

  it('knows a certificate by its CN and DNS names, and checks them against the allowed list', () => {
    const cert = new X509Certificate(readFileSync(join(certs, 'c1.pem')));
    expect(certificateNames(cert)).toEqual(expect.arrayContaining(['c1', 'localhost']));
    expect(peerNameAllowed(['c1'], new Set(['c1', 'c2']))).toBe(true);
    expect(peerNameAllowed(['ops'], new Set(['c1', 'c2']))).toBe(false);
    expect(peerNameAllowed(['anyone'], undefined)).toBe(true);
  });

  it('refuses a capture certificate whose names are not in the allowed list', () => {
    expect(() => CaptureTls.load(files('ops'), new Set(['c1', 'c2']), undefined)).toThrow(/none of them in --tls-allowed-names/);
    const captureTls = CaptureTls.load(files('c1'), new Set(['c1', 'c2']), new Map([['ops', 'admin']]));
    expect(captureTls.allowedNames?.has('c2')).toBe(true);
  });
});
