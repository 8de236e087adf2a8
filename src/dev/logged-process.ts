/**
 * A child process whose stdout and stderr go to a log file (not to memory), for long
 * soaks: the file survives the process and is kept for a failing run. Stopped by the pid
 * it was started with, never by name.
 */
import { spawn } from 'node:child_process';
import type { ChildProcess, SpawnOptions } from 'node:child_process';
import { closeSync, openSync, readSync, statSync } from 'node:fs';

/** How a logged process ended. */
export interface ProcessExit {
  readonly code: number | null;
  readonly signal: NodeJS.Signals | null;
  readonly atMs: number;
}

export class LoggedProcess {
  readonly exited: Promise<ProcessExit>;
  exit: ProcessExit | undefined;
  /** Set before every signal this side sends that ends the process. */
  killedOnPurpose = false;
  stopped = false;
  private readonly child: ChildProcess;

  constructor(
    readonly name: string,
    command: string,
    args: readonly string[],
    readonly logPath: string,
    options: SpawnOptions = {},
  ) {
    const fd = openSync(logPath, 'a');
    try {
      this.child = spawn(command, args, { ...options, stdio: ['ignore', fd, fd] });
    } finally {
      // The child holds its own copy of the descriptor.
      closeSync(fd);
    }
    this.exited = new Promise((resolve) => {
      this.child.once('exit', (code, signal) => {
        this.exit = { code, signal, atMs: Date.now() };
        resolve(this.exit);
      });
      this.child.once('error', () => {
        this.exit ??= { code: null, signal: null, atMs: Date.now() };
        resolve(this.exit);
      });
    });
  }

  get pid(): number {
    if (this.child.pid === undefined) throw new Error(`${this.name} has no pid`);
    return this.child.pid;
  }

  get running(): boolean {
    return this.exit === undefined && this.child.exitCode === null && this.child.signalCode === null;
  }

  /** Sends a signal if the process still runs; false when it did not. */
  signal(signal: NodeJS.Signals): boolean {
    if (!this.running || this.child.pid === undefined) return false;
    try {
      process.kill(this.child.pid, signal);
      return true;
    } catch {
      return false;
    }
  }

  pause(): void {
    if (this.signal('SIGSTOP')) this.stopped = true;
  }

  resume(): void {
    this.signal('SIGCONT');
    this.stopped = false;
  }

  /** SIGKILL, on purpose; resolves once it is gone. */
  async kill(): Promise<ProcessExit> {
    this.killedOnPurpose = true;
    this.signal('SIGCONT');
    this.signal('SIGKILL');
    return this.exited;
  }

  /** SIGKILL without waiting, for exit handlers. */
  killNow(): void {
    this.killedOnPurpose = true;
    this.signal('SIGCONT');
    this.signal('SIGKILL');
  }

  /** The last `bytes` of the log file. */
  tail(bytes = 4_000): string {
    let fd: number | undefined;
    try {
      const size = statSync(this.logPath).size;
      const length = Math.min(size, bytes);
      const buffer = Buffer.alloc(length);
      fd = openSync(this.logPath, 'r');
      readSync(fd, buffer, 0, length, size - length);
      return buffer.toString('utf8');
    } catch {
      return '';
    } finally {
      if (fd !== undefined) closeSync(fd);
    }
  }
}
