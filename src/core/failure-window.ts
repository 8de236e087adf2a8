/**
 * When spans that keep failing fail their changefeed. Pure: the owner feeds it, every
 * tick, how many spans the captures report as retrying a failed step and the
 * changefeed's checkpoint; time is the tick count.
 *
 * ```
 * ok ──spans failing──► failing (since: this tick, at this checkpoint)
 * failing ──the checkpoint moved──► ok, or failing anew from here if spans still fail
 *         ──no span failing for quietTicks──► ok
 *         ──windowTicks since it began──► expired: the owner fails the changefeed
 * ```
 * A span that is given back and placed again reports no failure for a moment between
 * two captures; the quiet period keeps that from starting the window over. Like TiCDC's
 * 30-minute window, it counts from the first failure with no progress since, and an
 * owner change starts it again (it lives in the owner's memory).
 */

export interface FailureWindowLimits {
  /** Ticks of failures without the checkpoint moving before the changefeed fails. */
  readonly windowTicks: number;
  /** Ticks without any failing span after which the failures are over. */
  readonly quietTicks: number;
}

export interface FailureWindowInput {
  readonly tick: number;
  readonly failingSpans: number;
  readonly error: string | undefined;
  readonly checkpointTs: bigint;
}

export type FailureWindowState =
  | { readonly kind: 'ok' }
  | { readonly kind: 'failing'; readonly forTicks: number; readonly error: string }
  | { readonly kind: 'expired'; readonly forTicks: number; readonly error: string };

export class FailureWindow {
  private since: { tick: number; checkpointTs: bigint } | undefined;
  private lastFailingTick = 0;
  private lastError = '';

  constructor(private readonly limits: FailureWindowLimits) {}

  observe(input: FailureWindowInput): FailureWindowState {
    const since = this.since;
    if (since !== undefined && input.checkpointTs > since.checkpointTs) this.since = undefined;
    if (input.failingSpans > 0) {
      this.lastFailingTick = input.tick;
      if (input.error !== undefined && input.error !== '') this.lastError = input.error;
      this.since ??= { tick: input.tick, checkpointTs: input.checkpointTs };
    } else if (this.since !== undefined && input.tick - this.lastFailingTick >= this.limits.quietTicks) {
      this.since = undefined;
    }
    const current = this.since;
    if (current === undefined) return { kind: 'ok' };
    const forTicks = input.tick - current.tick;
    if (forTicks >= this.limits.windowTicks) return { kind: 'expired', forTicks, error: this.lastError };
    return { kind: 'failing', forTicks, error: this.lastError };
  }
}
