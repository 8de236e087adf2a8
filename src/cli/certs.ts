/**
 * `spanfeed certs create`: a CA and one certificate per name, made with the openssl CLI
 * (the tool operators already use to make and inspect certificates, so README can show
 * the same commands for doing it by hand, and spanfeed needs no crypto dependency).
 *
 *   spanfeed certs create --dir D --names a,b,c [--hosts h1,h2] [--days N] [--force]
 *
 * Everything is made in a temp directory inside D (mode 0700, removed afterwards) and each
 * leaf is checked with `readTlsMaterial` there (key matches, chains to the CA) before any
 * file lands in D: a broken openssl output fails loudly and leaves D as it was.
 */
import { X509Certificate, createPrivateKey, randomBytes } from 'node:crypto';
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { isIP } from 'node:net';
import { join, resolve } from 'node:path';
import { spawnSync } from 'node:child_process';
import { parseArgs } from 'node:util';
import { TlsFileError, readTlsMaterial } from '../security/tls-files.ts';

export const certsUsage = `spanfeed certs create --dir <dir> --names <name,...> [--hosts <host,...>] [--days <n>] [--force]

Makes a CA and, for each name, a certificate and key for spanfeed's TLS (--tls-ca,
--tls-cert, --tls-key; --etcd-ca, --etcd-cert, --etcd-key; etcd's own certificate flags),
with the openssl command line tool. Writes into <dir> (created with mode 0700 when missing):
  ca.pem, ca-key.pem            the CA: EC P-256, self-signed, valid 3650 days
  <name>.pem, <name>-key.pem    per name: EC P-256, subject CN=<name>, alt names
                                DNS:<name>, DNS:localhost, IP:127.0.0.1 and every --hosts
                                entry, usable as server and as client (mutual TLS)
Keys are written with mode 0600, certificates 0644.

When <dir> already holds ca.pem and ca-key.pem, that CA signs the new names (so a
capture can be added to a cluster); existing files are never overwritten unless --force,
which makes a new CA too (certificates of names not listed then no longer chain to it).

Flags:
  --dir <dir>           where to write (required)
  --names <list>        certificate names, comma-separated: 1-64 letters, digits, ".", "_"
                        or "-", starting with a letter or digit; not "ca", not ending in
                        "-key"; at most 100 (required)
  --hosts <list>        more alt names for every certificate: DNS names or IP addresses,
                        comma-separated, at most 100
  --days <n>            validity of the certificates, 1-3650 (default 825)
  --force               overwrite existing files, with a new CA
`;

/** Limits on what one run makes. */
const namesMax = 100;
const hostsMax = 100;
const leafDaysDefault = 825;
const leafDaysMax = 3650;
const caDays = 3650;
/** How long one openssl call may take (key generation is milliseconds; this catches a hang). */
const opensslTimeoutMs = 60_000;

const keyMode = 0o600;
const certMode = 0o644;

/** A bad flag: printed, exit 2. */
export class CertsUsageError extends Error {
  override readonly name = 'CertsUsageError';
  readonly retryable = false;
}

/** The certificates cannot be made (no openssl, files in the way, a bad CA): printed, exit 1. */
export class CertsError extends Error {
  override readonly name = 'CertsError';
  readonly retryable = false;
}

/** What `certs create` is asked for, validated. */
export interface CertsRequest {
  readonly dir: string;
  readonly names: readonly string[];
  readonly hosts: readonly string[];
  readonly days: number;
  readonly force: boolean;
}

const namePattern = /^[a-zA-Z0-9][a-zA-Z0-9._-]{0,63}$/;
const dnsLabelPattern = /^[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?$/;

function list(option: string, raw: string, max: number): string[] {
  const entries = raw.split(',').map((e) => e.trim());
  if (entries.some((e) => e === '')) throw new CertsUsageError(`${option} has an empty entry in ${JSON.stringify(raw.slice(0, 200))}`);
  if (entries.length > max) throw new CertsUsageError(`${option} lists ${entries.length} entries, at most ${max}`);
  return entries;
}

/** Parses the names: safe as file names and as a subject CN, none twice (ignoring case, as DNS does). */
export function parseNames(raw: string): string[] {
  const names = list('--names', raw, namesMax);
  const seen = new Set<string>();
  for (const name of names) {
    if (!namePattern.test(name)) {
      throw new CertsUsageError(`--names: ${JSON.stringify(name.slice(0, 80))} is not a certificate name (1-64 letters, digits, ".", "_" or "-", starting with a letter or digit)`);
    }
    // ca.pem is the CA's file, and <x>-key.pem of a name "<x>-key" would be the key of "<x>".
    if (name.toLowerCase() === 'ca') throw new CertsUsageError('--names: "ca" is taken by the CA\'s own files (ca.pem, ca-key.pem)');
    if (name.toLowerCase().endsWith('-key')) throw new CertsUsageError(`--names: ${JSON.stringify(name)} ends in "-key", which names key files`);
    if (seen.has(name.toLowerCase())) throw new CertsUsageError(`--names lists ${JSON.stringify(name)} twice`);
    seen.add(name.toLowerCase());
  }
  return names;
}

/** Parses the extra alt names: IPv4/IPv6 addresses or DNS names (labels of letters, digits and "-"). */
export function parseHosts(raw: string): string[] {
  const hosts = list('--hosts', raw, hostsMax);
  for (const host of hosts) {
    if (isIP(host) !== 0) {
      // A zone index (fe80::1%eth0) has no place in a certificate.
      if (host.includes('%')) throw new CertsUsageError(`--hosts: ${JSON.stringify(host.slice(0, 80))} has a zone index; give the address alone`);
      continue;
    }
    const labels = host.split('.');
    if (host.length > 253 || !labels.every((l) => dnsLabelPattern.test(l)) || /^\d+$/.test(labels[labels.length - 1] as string)) {
      throw new CertsUsageError(`--hosts: ${JSON.stringify(host.slice(0, 80))} is neither an IP address nor a DNS name`);
    }
  }
  return hosts;
}

function parseDays(raw: string | undefined): number {
  if (raw === undefined) return leafDaysDefault;
  const days = Number(raw);
  if (!/^\d{1,5}$/.test(raw) || days < 1 || days > leafDaysMax) throw new CertsUsageError(`--days must be an integer from 1 to ${leafDaysMax}, got ${JSON.stringify(raw.slice(0, 40))}`);
  return days;
}

/** Parses `certs create` flags (after `create`). */
export function parseCertsRequest(argv: readonly string[]): CertsRequest {
  let values;
  try {
    ({ values } = parseArgs({
      args: [...argv],
      options: {
        dir: { type: 'string' },
        names: { type: 'string' },
        hosts: { type: 'string' },
        days: { type: 'string' },
        force: { type: 'boolean' },
      },
      strict: true,
      allowPositionals: false,
    }));
  } catch (error) {
    throw new CertsUsageError((error as Error).message);
  }
  if (values.dir === undefined || values.dir === '' || values.dir.includes('\u0000')) throw new CertsUsageError('--dir <directory> is required');
  if (values.names === undefined) throw new CertsUsageError('--names <name,...> is required');
  return {
    dir: resolve(values.dir),
    names: parseNames(values.names),
    hosts: values.hosts === undefined ? [] : parseHosts(values.hosts),
    days: parseDays(values.days),
    force: values.force === true,
  };
}

/** The subject alternative names of `name`'s certificate, without repeats, in the order given. */
export function subjectAltNames(name: string, hosts: readonly string[]): string[] {
  const entries = [name, 'localhost', '127.0.0.1', ...hosts].map((h) => (isIP(h) === 0 ? `DNS:${h.toLowerCase()}` : `IP:${h}`));
  return [...new Set(entries)];
}

/** Runs openssl with `args`; throws a CertsError with its stderr when it fails. */
function openssl(args: readonly string[], cwd: string): void {
  const run = spawnSync('openssl', args, { cwd, encoding: 'utf8', timeout: opensslTimeoutMs, stdio: ['ignore', 'pipe', 'pipe'] });
  if (run.error !== undefined) {
    if ((run.error as NodeJS.ErrnoException).code === 'ENOENT') throw opensslMissing();
    throw new CertsError(`openssl ${args[0]} failed: ${run.error.message}`, { cause: run.error });
  }
  if (run.status !== 0) throw new CertsError(`openssl ${args.join(' ')} exited ${run.status ?? run.signal}: ${run.stderr.trim().slice(0, 2000)}`);
}

function opensslMissing(): CertsError {
  return new CertsError('the openssl command is not installed (or not on PATH); install it, for example: apt-get install openssl');
}

/** Fails with what to install when there is no openssl. */
function checkOpenssl(): void {
  const run = spawnSync('openssl', ['version'], { encoding: 'utf8', timeout: opensslTimeoutMs, stdio: ['ignore', 'pipe', 'pipe'] });
  if (run.error !== undefined && (run.error as NodeJS.ErrnoException).code === 'ENOENT') throw opensslMissing();
  if (run.error !== undefined || run.status !== 0) throw new CertsError(`openssl version failed: ${run.error?.message ?? run.stderr.trim().slice(0, 500)}`);
}

/** The openssl config of every `req`: subject from -subj, no prompt, no system openssl.cnf. */
const reqConfig = `[req]
distinguished_name = dn
prompt = no
[dn]
[v3_ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
`;

function leafExtensions(sans: readonly string[]): string {
  return `[v3_leaf]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth, clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid, issuer
subjectAltName = ${sans.join(', ')}
`;
}

/** A positive random 128-bit serial (RFC 5280 allows 20 bytes; the top bit is cleared to keep it positive). */
function serial(): string {
  const bytes = randomBytes(16);
  bytes[0] = (bytes[0] as number) & 0x7f;
  return `0x${bytes.toString('hex')}`;
}

function genKey(path: string, cwd: string): void {
  openssl(['genpkey', '-algorithm', 'EC', '-pkeyopt', 'ec_paramgen_curve:P-256', '-pkeyopt', 'ec_param_enc:named_curve', '-out', path], cwd);
}

/** A file `certs create` writes, with its bytes and mode. */
interface Output {
  readonly path: string;
  readonly bytes: Buffer;
  readonly mode: number;
  readonly note: string;
}

/** Reads and checks an existing CA in the directory: a CA certificate, its key, valid past the leaves' end. */
function existingCa(caFile: string, caKeyFile: string, days: number): X509Certificate {
  let ca: X509Certificate;
  try {
    ca = new X509Certificate(readFileSync(caFile));
  } catch (error) {
    throw new CertsError(`${caFile} is not a PEM certificate: ${(error as Error).message}`, { cause: error });
  }
  if (!ca.ca) throw new CertsError(`${caFile} is not a CA certificate (basicConstraints CA:TRUE)`);
  let key;
  try {
    key = createPrivateKey(readFileSync(caKeyFile));
  } catch (error) {
    throw new CertsError(`${caKeyFile} is not a PEM private key: ${(error as Error).message}`, { cause: error });
  }
  if (!ca.checkPrivateKey(key)) throw new CertsError(`${caKeyFile} is not the key of ${caFile}`);
  const leafEnd = Date.now() + days * 86_400_000;
  if (new Date(ca.validTo).getTime() < leafEnd) {
    throw new CertsError(`the CA ${caFile} expires on ${ca.validTo}, before certificates of ${days} days would: give a smaller --days, or --force for a new CA`);
  }
  return ca;
}

/**
 * Makes the CA (or uses the one in `dir`) and the leaves in `workDir`, checks every leaf,
 * and returns the files to write into `dir`.
 */
function makeCertificates(request: CertsRequest, workDir: string, reuseCa: boolean): { outputs: Output[]; caNote: string } {
  const caFile = join(request.dir, 'ca.pem');
  const caKeyFile = join(request.dir, 'ca-key.pem');
  writeFileSync(join(workDir, 'req.cnf'), reqConfig, { mode: 0o600 });
  const outputs: Output[] = [];
  let caPath: string;
  let caKeyPath: string;
  let caNote: string;
  if (reuseCa) {
    const ca = existingCa(caFile, caKeyFile, request.days);
    caPath = caFile;
    caKeyPath = caKeyFile;
    caNote = `using the CA in ${caFile} (${ca.subject.replace(/\n/g, ', ')}, until ${ca.validTo})`;
  } else {
    caPath = join(workDir, 'ca.pem');
    caKeyPath = join(workDir, 'ca-key.pem');
    // A random suffix tells two CAs apart in `openssl x509 -noout -issuer` output.
    const subject = `/CN=spanfeed CA ${randomBytes(4).toString('hex')}`;
    genKey('ca-key.pem', workDir);
    openssl(['req', '-new', '-x509', '-config', 'req.cnf', '-extensions', 'v3_ca', '-key', 'ca-key.pem', '-subj', subject, '-sha256', '-days', String(caDays), '-set_serial', serial(), '-out', 'ca.pem'], workDir);
    const ca = new X509Certificate(readFileSync(caPath));
    if (!ca.ca) throw new CertsError('openssl made a CA certificate without basicConstraints CA:TRUE');
    caNote = `CA ${subject.slice(4)}, until ${ca.validTo}`;
    outputs.push({ path: caFile, bytes: readFileSync(caPath), mode: certMode, note: caNote });
    outputs.push({ path: caKeyFile, bytes: readFileSync(caKeyPath), mode: keyMode, note: 'the CA key: keep it off the captures' });
  }
  for (const name of request.names) {
    const sans = subjectAltNames(name, request.hosts);
    writeFileSync(join(workDir, 'leaf.cnf'), leafExtensions(sans), { mode: 0o600 });
    genKey(`${name}-key.pem`, workDir);
    openssl(['req', '-new', '-config', 'req.cnf', '-key', `${name}-key.pem`, '-subj', `/CN=${name}`, '-sha256', '-out', `${name}.csr`], workDir);
    openssl(
      ['x509', '-req', '-in', `${name}.csr`, '-CA', caPath, '-CAkey', caKeyPath, '-set_serial', serial(), '-days', String(request.days), '-sha256', '-extfile', 'leaf.cnf', '-extensions', 'v3_leaf', '-out', `${name}.pem`],
      workDir,
    );
    const certPath = join(workDir, `${name}.pem`);
    const keyPath = join(workDir, `${name}-key.pem`);
    let names: readonly string[];
    try {
      names = readTlsMaterial('certs', { caFile: caPath, certFile: certPath, keyFile: keyPath }).names;
    } catch (error) {
      if (error instanceof TlsFileError) throw new CertsError(`openssl made a certificate for ${name} that does not check: ${error.message}`, { cause: error });
      throw error;
    }
    if (!names.includes(name)) throw new CertsError(`openssl made a certificate for ${name} without that name (it has ${names.join(', ')})`);
    const cert = new X509Certificate(readFileSync(certPath));
    outputs.push({ path: join(request.dir, `${name}.pem`), bytes: readFileSync(certPath), mode: certMode, note: `CN=${name}; ${sans.join(', ')}; until ${cert.validTo}` });
    outputs.push({ path: join(request.dir, `${name}-key.pem`), bytes: readFileSync(keyPath), mode: keyMode, note: `key of ${name}` });
  }
  return { outputs, caNote };
}

/** Creates the certificates of `request`; returns the lines to print. */
export function createCertificates(request: CertsRequest): string[] {
  checkOpenssl();
  if (existsSync(request.dir) && !statSync(request.dir).isDirectory()) throw new CertsError(`--dir ${request.dir} is not a directory`);
  mkdirSync(request.dir, { recursive: true, mode: 0o700 });
  const caFile = join(request.dir, 'ca.pem');
  const caKeyFile = join(request.dir, 'ca-key.pem');
  const leafFiles = request.names.flatMap((name) => [join(request.dir, `${name}.pem`), join(request.dir, `${name}-key.pem`)]);
  let reuseCa = false;
  if (!request.force) {
    const inTheWay = leafFiles.filter((f) => existsSync(f));
    if (inTheWay.length > 0) throw new CertsError(`refusing to overwrite ${inTheWay.join(', ')}: remove them, or give --force (which makes a new CA too)`);
    const caPresent = [caFile, caKeyFile].filter((f) => existsSync(f));
    if (caPresent.length === 1) throw new CertsError(`${request.dir} holds ${caPresent[0]} without its ${caPresent[0] === caFile ? 'key ca-key.pem' : 'certificate ca.pem'}: restore it, or give --force for a new CA`);
    reuseCa = caPresent.length === 2;
  }
  const workDir = mkdtempSync(join(request.dir, '.spanfeed-certs-'));
  try {
    chmodSync(workDir, 0o700);
    const { outputs, caNote } = makeCertificates(request, workDir, reuseCa);
    const lines = reuseCa ? [caNote] : [];
    for (const output of outputs) {
      try {
        // 'wx' refuses a file that appeared since the check above.
        writeFileSync(output.path, output.bytes, { flag: request.force ? 'w' : 'wx', mode: output.mode });
        chmodSync(output.path, output.mode);
      } catch (error) {
        throw new CertsError(`cannot write ${output.path}: ${(error as Error).message}`, { cause: error });
      }
      lines.push(`wrote ${output.path} (${output.mode.toString(8).padStart(4, '0')}): ${output.note}`);
    }
    return lines;
  } finally {
    rmSync(workDir, { recursive: true, force: true });
  }
}

/** `spanfeed certs <verb>`; returns the exit code. */
export async function runCerts(argv: readonly string[]): Promise<number> {
  const [verb, ...rest] = argv;
  if (verb === undefined) {
    process.stderr.write(certsUsage);
    return 2;
  }
  if (verb === '--help' || verb === '-h' || verb === 'help' || rest.includes('--help') || rest.includes('-h')) {
    process.stdout.write(certsUsage);
    return 0;
  }
  if (verb !== 'create') {
    process.stderr.write(`spanfeed certs: unknown verb ${JSON.stringify(verb.slice(0, 40))}; run "spanfeed certs --help"\n`);
    return 2;
  }
  try {
    const lines = createCertificates(parseCertsRequest(rest));
    process.stdout.write(`${lines.join('\n')}\n`);
    return 0;
  } catch (error) {
    if (error instanceof CertsUsageError) {
      process.stderr.write(`spanfeed certs create: ${error.message}\n`);
      return 2;
    }
    if (error instanceof CertsError) {
      process.stderr.write(`spanfeed certs create: ${error.message}\n`);
      return 1;
    }
    throw error;
  }
}
