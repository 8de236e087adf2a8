/**
 * `spanfeed certs create` with the real openssl: the files and their modes, what the
 * certificates hold (chain, CN, alt names, key usage), refusals, and a mutual-TLS
 * handshake on loopback between two generated certificates, refused for a certificate of
 * another CA.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect, createServer } from 'node:tls';
import type { TLSSocket } from 'node:tls';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CertsUsageError, parseCertsRequest } from '../../src/cli/certs.ts';
import { readTlsMaterial } from '../../src/security/tls-files.ts';

const root = fileURLToPath(new URL('../..', import.meta.url));
let tempRoot: string;
/** Made once in beforeAll: capture1 and capture2 with two extra hosts, 30 days. */
let dir: string;
let firstRun: Run;

interface Run {
  readonly status: number | null;
  readonly stdout: string;
  readonly stderr: string;
}

/** Runs `spanfeed certs ...` as a process, as an operator would. */
function certs(args: readonly string[], env: NodeJS.ProcessEnv = process.env): Run {
  const run = spawnSync(process.execPath, [join(root, 'bin/spanfeed'), 'certs', ...args], { cwd: root, env, encoding: 'utf8', timeout: 60_000 });
  return { status: run.status, stdout: run.stdout, stderr: run.stderr };
}

const modeOf = (path: string): number => statSync(path).mode & 0o777;
const pem = (name: string, d = dir): Buffer => readFileSync(join(d, `${name}.pem`));
const cert = (name: string, d = dir): X509Certificate => new X509Certificate(pem(name, d));
const opensslText = (path: string): string => execFileSync('openssl', ['x509', '-in', path, '-noout', '-text'], { encoding: 'utf8' });

beforeAll(() => {
  execFileSync('bash', [join(root, 'scripts/ensure-openssl.sh')], { stdio: 'inherit' });
  tempRoot = mkdtempSync(join(tmpdir(), 'spanfeed-certs-test-'));
  dir = join(tempRoot, 'certs');
  firstRun = certs(['create', '--dir', dir, '--names', 'capture1,capture2', '--hosts', 'cap.example.com,10.1.2.3', '--days', '30']);
});

afterAll(() => {
  if (tempRoot !== undefined) rmSync(tempRoot, { recursive: true, force: true });
});

describe('spanfeed certs create', () => {
  it('writes the CA and one certificate and key per name, keys 0600, certificates 0644, the directory 0700', () => {
    expect(firstRun.stderr).toBe('');
    expect(firstRun.status).toBe(0);
    expect(readdirSync(dir).sort()).toEqual(['ca-key.pem', 'ca.pem', 'capture1-key.pem', 'capture1.pem', 'capture2-key.pem', 'capture2.pem']);
    expect(modeOf(dir)).toBe(0o700);
    for (const file of ['ca.pem', 'capture1.pem', 'capture2.pem']) expect(modeOf(join(dir, file)), file).toBe(0o644);
    for (const file of ['ca-key.pem', 'capture1-key.pem', 'capture2-key.pem']) expect(modeOf(join(dir, file)), file).toBe(0o600);
    for (const file of readdirSync(dir)) expect(firstRun.stdout).toContain(`wrote ${join(dir, file)} `);
  });

  it('makes an EC P-256 CA with CA:TRUE and keyCertSign, cRLSign', () => {
    const ca = cert('ca');
    expect(ca.ca).toBe(true);
    expect(ca.issuer).toBe(ca.subject);
    expect(ca.verify(ca.publicKey)).toBe(true);
    expect(ca.publicKey.asymmetricKeyDetails?.namedCurve).toBe('prime256v1');
    const days = (new Date(ca.validTo).getTime() - new Date(ca.validFrom).getTime()) / 86_400_000;
    expect(days).toBe(3650);
    const text = opensslText(join(dir, 'ca.pem'));
    expect(text).toMatch(/X509v3 Basic Constraints: critical\s+CA:TRUE/);
    expect(text).toMatch(/X509v3 Key Usage: critical\s+Certificate Sign, CRL Sign/);
  });

  it('signs each name with the CA: CN, alt names, server and client use, CA:FALSE, the --days asked for', () => {
    const ca = cert('ca');
    for (const name of ['capture1', 'capture2']) {
      const leaf = cert(name);
      expect(leaf.checkIssued(ca), name).toBe(true);
      expect(leaf.verify(ca.publicKey), name).toBe(true);
      expect(leaf.subject).toBe(`CN=${name}`);
      expect(leaf.subjectAltName).toBe(`DNS:${name}, DNS:localhost, IP Address:127.0.0.1, DNS:cap.example.com, IP Address:10.1.2.3`);
      // extendedKeyUsage: serverAuth, clientAuth.
      expect([...(leaf.keyUsage ?? [])].sort()).toEqual(['1.3.6.1.5.5.7.3.1', '1.3.6.1.5.5.7.3.2']);
      expect(leaf.ca).toBe(false);
      expect(leaf.publicKey.asymmetricKeyDetails?.namedCurve).toBe('prime256v1');
      expect((new Date(leaf.validTo).getTime() - new Date(leaf.validFrom).getTime()) / 86_400_000).toBe(30);
      expect(opensslText(join(dir, `${name}.pem`))).toMatch(/X509v3 Basic Constraints: critical\s+CA:FALSE/);
      const material = readTlsMaterial('--tls', { caFile: join(dir, 'ca.pem'), certFile: join(dir, `${name}.pem`), keyFile: join(dir, `${name}-key.pem`) });
      expect(material.names).toEqual([name, 'localhost', 'cap.example.com']);
    }
    expect(cert('capture1').serialNumber).not.toBe(cert('capture2').serialNumber);
  });

  it('refuses to overwrite existing files, and overwrites them with a new CA with --force', () => {
    const forceDir = join(tempRoot, 'force');
    expect(certs(['create', '--dir', forceDir, '--names', 'a1']).status).toBe(0);
    const before = { ca: pem('ca', forceDir), leaf: pem('a1', forceDir) };
    const again = certs(['create', '--dir', forceDir, '--names', 'a1,b1']);
    expect(again.status).toBe(1);
    expect(again.stderr).toContain('refusing to overwrite');
    expect(again.stderr).toContain(join(forceDir, 'a1.pem'));
    expect(pem('ca', forceDir).equals(before.ca)).toBe(true);
    expect(pem('a1', forceDir).equals(before.leaf)).toBe(true);
    expect(existsSync(join(forceDir, 'b1.pem'))).toBe(false);

    const forced = certs(['create', '--dir', forceDir, '--names', 'a1', '--force']);
    expect(forced.stderr).toBe('');
    expect(forced.status).toBe(0);
    expect(pem('ca', forceDir).equals(before.ca)).toBe(false);
    expect(cert('a1', forceDir).checkIssued(cert('ca', forceDir))).toBe(true);
    expect(modeOf(join(forceDir, 'a1-key.pem'))).toBe(0o600);
    expect(readdirSync(forceDir).filter((f) => f.startsWith('.'))).toEqual([]);
  });

  it('adds a name with the CA already in the directory, and refuses a CA without its key', () => {
    const caBefore = pem('ca');
    const added = certs(['create', '--dir', dir, '--names', 'capture3']);
    expect(added.stderr).toBe('');
    expect(added.status).toBe(0);
    expect(added.stdout).toContain(`using the CA in ${join(dir, 'ca.pem')}`);
    expect(added.stdout).not.toContain(`wrote ${join(dir, 'ca.pem')}`);
    expect(pem('ca').equals(caBefore)).toBe(true);
    expect(cert('capture3').checkIssued(cert('ca'))).toBe(true);
    expect(cert('capture3').verify(cert('ca').publicKey)).toBe(true);

    const halfDir = join(tempRoot, 'half');
    mkdirSync(halfDir);
    execFileSync('cp', [join(dir, 'ca.pem'), halfDir]);
    const half = certs(['create', '--dir', halfDir, '--names', 'x1']);
    expect(half.status).toBe(1);
    expect(half.stderr).toContain('without its key ca-key.pem');
    expect(readdirSync(halfDir)).toEqual(['ca.pem']);
  });

  it('refuses a CA in the directory that is no CA, or that expires before the new certificates would', () => {
    const shortDir = join(tempRoot, 'short-ca');
    mkdirSync(shortDir);
    execFileSync('openssl', ['genpkey', '-algorithm', 'EC', '-pkeyopt', 'ec_paramgen_curve:P-256', '-out', join(shortDir, 'ca-key.pem')], { stdio: 'ignore' });
    const selfSigned = (days: string, basicConstraints: string): void => {
      execFileSync('openssl', ['req', '-new', '-x509', '-key', join(shortDir, 'ca-key.pem'), '-subj', '/CN=short', '-days', days, '-addext', `basicConstraints=critical,${basicConstraints}`, '-out', join(shortDir, 'ca.pem')], { stdio: 'ignore' });
    };
    selfSigned('10', 'CA:TRUE');
    const expiring = certs(['create', '--dir', shortDir, '--names', 'x1', '--days', '30']);
    expect(expiring.status).toBe(1);
    expect(expiring.stderr).toMatch(/expires on .*before certificates of 30 days would/);
    expect(certs(['create', '--dir', shortDir, '--names', 'x1', '--days', '5']).status).toBe(0);
    selfSigned('10', 'CA:FALSE');
    const notCa = certs(['create', '--dir', shortDir, '--names', 'x2', '--days', '5']);
    expect(notCa.status).toBe(1);
    expect(notCa.stderr).toContain('is not a CA certificate');
    expect(existsSync(join(shortDir, 'x2.pem'))).toBe(false);
  });

  it('refuses bad names, hosts and days (exit 2) and writes nothing', () => {
    const bad: [string[], RegExp][] = [
      [['--names', 'a/b'], /not a certificate name/],
      [['--names=-a'], /not a certificate name/],
      [['--names', '.a'], /not a certificate name/],
      [['--names', 'a b'], /not a certificate name/],
      [['--names', 'x'.repeat(65)], /not a certificate name/],
      [['--names', ''], /empty entry/],
      [['--names', 'a,,b'], /empty entry/],
      [['--names', 'a,b,a'], /lists "a" twice/],
      [['--names', 'Node,node'], /lists "node" twice/],
      [['--names', 'ca'], /taken by the CA/],
      [['--names', 'x-key'], /ends in "-key"/],
      [['--names', Array.from({ length: 101 }, (_, i) => `n${i}`).join(',')], /at most 100/],
      [['--names', 'a', '--hosts', 'bad_host'], /neither an IP address nor a DNS name/],
      [['--names', 'a', '--hosts', '1.2.3.999'], /neither an IP address nor a DNS name/],
      [['--names', 'a', '--hosts', 'fe80::1%eth0'], /zone index/],
      [['--names', 'a', '--hosts', `${'x'.repeat(64)}.com`], /neither/],
      [['--names', 'a', '--days', '0'], /--days must be an integer from 1 to 3650/],
      [['--names', 'a', '--days', '3651'], /--days/],
      [['--names', 'a', '--days', '1.5'], /--days/],
      [['--names', 'a', '--days', 'abc'], /--days/],
      [['--names', 'a'], /--dir <directory> is required/],
    ];
    for (const [args, message] of bad) {
      const withDir = args.includes('--names') && message.source.includes('--dir') ? args : ['--dir', join(tempRoot, 'never'), ...args];
      expect(() => parseCertsRequest(withDir), args.join(' ')).toThrow(CertsUsageError);
      expect(() => parseCertsRequest(withDir), args.join(' ')).toThrow(message);
    }
    expect(() => parseCertsRequest(['--dir', join(tempRoot, 'never')])).toThrow(/--names <name,...> is required/);
    expect(parseCertsRequest(['--dir', 'd', '--names', 'a', '--hosts', '::1,db.internal,10.0.0.1']).hosts).toEqual(['::1', 'db.internal', '10.0.0.1']);

    const never = join(tempRoot, 'never');
    for (const args of [['--names', 'a/b'], ['--names', 'a', '--days', '0'], ['--names', 'a', '--bogus'], ['--names', 'a', '--hosts', 'bad_host']]) {
      const run = certs(['create', '--dir', never, ...args]);
      expect(run.status, args.join(' ')).toBe(2);
      expect(run.stderr).toMatch(/^spanfeed certs create: /);
    }
    expect(certs(['make']).status).toBe(2);
    expect(existsSync(never)).toBe(false);
  });

  it('says what to install when openssl is missing (exit 1)', () => {
    const emptyPath = join(tempRoot, 'empty-path');
    mkdirSync(emptyPath);
    const run = certs(['create', '--dir', join(tempRoot, 'no-openssl'), '--names', 'a'], { ...process.env, PATH: emptyPath });
    expect(run.status).toBe(1);
    expect(run.stderr).toContain('apt-get install openssl');
    expect(existsSync(join(tempRoot, 'no-openssl'))).toBe(false);
  });

  it('two generated certificates make a mutual-TLS connection on loopback; a certificate of another CA is refused both ways', async () => {
    const otherDir = join(tempRoot, 'other');
    expect(certs(['create', '--dir', otherDir, '--names', 'capture2']).status).toBe(0);
    const ca = pem('ca');
    const server = createServer({ ca, cert: pem('capture1'), key: pem('capture1-key'), requestCert: true, rejectUnauthorized: true, minVersion: 'TLSv1.2' });
    const peers: string[] = [];
    const refusals: Error[] = [];
    server.on('secureConnection', (socket: TLSSocket) => {
      peers.push(String(socket.getPeerCertificate().subject.CN));
      socket.end('hello');
    });
    server.on('tlsClientError', (error: Error) => refusals.push(error));
    await new Promise<void>((done) => server.listen(0, '127.0.0.1', done));
    const { port } = server.address() as AddressInfo;
    /** Connects with the client files given; resolves with what the client read, or the error. */
    const dial = (clientCa: Buffer, clientDir: string, servername?: string): Promise<{ data?: string; error?: Error; authorized?: boolean }> =>
      new Promise((done) => {
        const socket = connect({ host: '127.0.0.1', port, ca: clientCa, cert: pem('capture2', clientDir), key: pem('capture2-key', clientDir), ...(servername === undefined ? {} : { servername }) });
        let data = '';
        socket.on('data', (chunk: Buffer) => (data += chunk.toString()));
        socket.on('end', () => done({ data, authorized: socket.authorized }));
        socket.on('error', (error) => done({ error }));
      });
    try {
      const byIp = await dial(ca, dir);
      expect(byIp.error).toBeUndefined();
      expect(byIp).toMatchObject({ data: 'hello', authorized: true });
      const byName = await dial(ca, dir, 'capture1');
      expect(byName).toMatchObject({ data: 'hello', authorized: true });
      expect(peers).toEqual(['capture2', 'capture2']);

      // The client shows capture2 of another CA: the server refuses it.
      // (With TLS 1.3 the client finishes its side first; the server then drops the
      // connection without a secureConnection, which is what counts.)
      const foreignClient = await dial(ca, otherDir);
      expect(foreignClient.data ?? '').not.toContain('hello');
      await expect.poll(() => refusals.length).toBe(1);
      // The client trusts only the other CA: it refuses the server's certificate.
      const foreignServer = await dial(pem('ca', otherDir), otherDir);
      expect(foreignServer.error?.message).toMatch(/certificate/i);
      expect(peers).toEqual(['capture2', 'capture2']);
    } finally {
      await new Promise<void>((done) => server.close(() => done()));
    }
  });
});
