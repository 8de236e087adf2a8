/**
 * The `spanfeed` command line. Subcommands register here; each returns its exit code.
 */
import { readFileSync } from 'node:fs';

const packageJson = JSON.parse(
  readFileSync(new URL('../../package.json', import.meta.url), 'utf8'),
) as { version: string };

/** The version printed by `--version` and reported by captures. */
export const version: string = packageJson.version;

const usage = `spanfeed ${version}: a changefeed cluster

Usage:
  spanfeed server [flags]   start a capture (spanfeed server --help for its flags)
  spanfeed verify [flags]   compare upstream and sink at the checkpoint (spanfeed verify --help)
  spanfeed cli [flags] <noun> <verb>   operate a cluster over its API (spanfeed cli --help)
  spanfeed certs create --dir D --names a,b   a CA and TLS certificates, with openssl
                            (spanfeed certs --help)
  spanfeed --help           show this help
  spanfeed --version        print the version

Development commands (run from a clone):
  npm test                                   unit tests, a short simulation, integration tests
  npm run sim -- --seeds N --steps M         the deterministic cluster simulator
  npm run bench:scheduler -- --spans N --captures C
`;

/** Runs the CLI with `argv` (without node and script) and returns the process exit code. */
export async function main(argv: readonly string[]): Promise<number> {
  const [first] = argv;
  if (first === undefined || first === '--help' || first === '-h' || first === 'help') {
    process.stdout.write(usage);
    return 0;
  }
  if (first === '--version' || first === '-v' || first === 'version') {
    process.stdout.write(`${version}\n`);
    return 0;
  }
  if (first === 'server') {
    const { runServer } = await import('./server.ts');
    return runServer(argv.slice(1), version);
  }
  if (first === 'cli') {
    const { runCli } = await import('./operator.ts');
    return runCli(argv.slice(1));
  }
  if (first === 'certs') {
    const { runCerts } = await import('./certs.ts');
    return runCerts(argv.slice(1));
  }
  if (first === 'verify') {
    const { runVerify } = await import('./verify.ts');
    return runVerify(argv.slice(1));
  }
  process.stderr.write(`spanfeed: unknown command or flag "${first}"; run "spanfeed --help"\n`);
  return 2;
}
