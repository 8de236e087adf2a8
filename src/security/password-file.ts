/**
 * Password files: a password is never a flag, a URI part or a config value, only the
 * first line of a file that names it. The file must be a regular file; at most
 * {@link passwordFileBytesMax} bytes of it are read. The password itself is in no
 * message this module throws.
 */
import { closeSync, fstatSync, openSync, readSync } from 'node:fs';
import { open } from 'node:fs/promises';

/** The longest part of a password file read. */
export const passwordFileBytesMax = 4096;

/** A password file that cannot be used; names the option and the file, never the password. */
export class PasswordFileError extends Error {
  override readonly name = 'PasswordFileError';
  readonly retryable = false;
}

function firstLine(bytes: Buffer): string {
  return bytes.toString('utf8').split(/\r?\n/)[0] ?? '';
}

/** The first line of a password file (at most 4 KiB of a regular file), read asynchronously. */
export async function readPasswordFile(path: string): Promise<string> {
  const handle = await open(path, 'r');
  try {
    const stat = await handle.stat();
    if (!stat.isFile()) throw new PasswordFileError(`password file ${path} is not a regular file`);
    const buffer = Buffer.alloc(Math.min(stat.size, passwordFileBytesMax));
    const { bytesRead } = await handle.read(buffer, 0, buffer.length, 0);
    return firstLine(buffer.subarray(0, bytesRead));
  } finally {
    await handle.close();
  }
}

/**
 * The same, synchronously, for a start-up flag (`option`, e.g. `--etcd-password-file`):
 * throws a {@link PasswordFileError} naming the option when the file cannot be read, is
 * not a regular file, or its first line is empty.
 */
export function readPasswordFileSync(option: string, path: string): string {
  let fd: number;
  try {
    fd = openSync(path, 'r');
  } catch (error) {
    throw new PasswordFileError(`${option} ${path} cannot be read: ${(error as Error).message}`);
  }
  try {
    const stat = fstatSync(fd);
    if (!stat.isFile()) throw new PasswordFileError(`${option} ${path} is not a regular file`);
    const buffer = Buffer.alloc(Math.min(stat.size, passwordFileBytesMax));
    const bytesRead = readSync(fd, buffer, 0, buffer.length, 0);
    const password = firstLine(buffer.subarray(0, bytesRead));
    if (password === '') throw new PasswordFileError(`${option} ${path}: its first line (the password) is empty`);
    return password;
  } finally {
    closeSync(fd);
  }
}
