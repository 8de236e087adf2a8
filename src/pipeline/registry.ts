/**
 * Builds sources and sinks from URIs. New kinds register here.
 */
import type { Sink, SinkContext } from './sink.ts';
import { BlackholeSink, parseBlackholeUri } from './sinks/blackhole.ts';
import { EtcdSink, parseEtcdSinkUri } from './sinks/etcd.ts';
import { FileSink, parseFileSinkUri } from './sinks/file.ts';
import { PostgresSink, parsePostgresSinkUri } from './sinks/postgres.ts';
import type { Source, SourceContext } from './source.ts';
import { DatagenSource, parseDatagenUri } from './sources/datagen.ts';
import { EtcdSource, parseEtcdSourceUri } from './sources/etcd.ts';
import { BadUriError } from './uri.ts';
import type { PipelineBounds } from './bounds.ts';
import { FailedEndpoint, GuardedSink, GuardedSource } from './guard.ts';

const sources = {
  datagen: (uri: string, context?: SourceContext): Source => new DatagenSource(parseDatagenUri(uri), context),
  etcd: (uri: string, context?: SourceContext): Source => new EtcdSource(parseEtcdSourceUri(uri), context),
} as const;

const sinks = {
  blackhole: (uri: string): Sink => new BlackholeSink(parseBlackholeUri(uri)),
  file: (uri: string, context?: SinkContext): Sink => new FileSink(parseFileSinkUri(uri), context),
  etcd: (uri: string, context?: SinkContext): Sink => new EtcdSink(parseEtcdSinkUri(uri), context),
  postgres: (uri: string, context?: SinkContext): Sink => new PostgresSink(parsePostgresSinkUri(uri), context),
  postgresql: (uri: string, context?: SinkContext): Sink => new PostgresSink(parsePostgresSinkUri(uri), context),
} as const;

const sourceValidators: Record<string, (uri: string) => unknown> = { datagen: parseDatagenUri, etcd: parseEtcdSourceUri };
const sinkValidators: Record<string, (uri: string) => unknown> = {
  blackhole: parseBlackholeUri,
  file: parseFileSinkUri,
  etcd: parseEtcdSinkUri,
  postgres: parsePostgresSinkUri,
  postgresql: parsePostgresSinkUri,
};

function schemeOf(uri: string): string {
  return /^([a-z]+):/.exec(uri)?.[1] ?? '';
}

function pick<T, C>(table: Record<string, (uri: string, context?: C) => T>, uri: string, what: string): (uri: string, context?: C) => T {
  const make = table[schemeOf(uri)];
  if (make === undefined) {
    throw new BadUriError(`${what} uri ${JSON.stringify(uri)}: supported schemes are ${Object.keys(table).map((s) => `${s}://`).join(', ')}`);
  }
  return make;
}

/** Checks a source URI without opening anything; throws BadUriError. */
export function validateSourceUri(uri: string): void {
  pick(sources, uri, 'source');
  sourceValidators[schemeOf(uri)]?.(uri);
}

/** Checks a sink URI without opening anything; throws BadUriError. */
export function validateSinkUri(uri: string): void {
  pick(sinks, uri, 'sink');
  sinkValidators[schemeOf(uri)]?.(uri);
}

/**
 * Opens a source; `context.credentialsRoot` bounds the files its URI names (without it
 * the URI may name none), `context.spanCount` is the changefeed's span count (datagen's
 * totalRate is spread over it).
 */
export function openSource(uri: string, context: SourceContext = {}): Source {
  return pick<Source, SourceContext>(sources, uri, 'source')(uri, context);
}

export function openSink(uri: string, context: SinkContext = {}): Sink {
  return pick(sinks, uri, 'sink')(uri, context);
}

/**
 * Opens a changefeed's source as a capture runs it: within `bounds` (see `guard.ts`). A
 * URI that cannot be parsed (a changefeed written into etcd by hand) does not throw: the
 * source fails every call with the reason, non-retryably, which fails the changefeed.
 */
export function openBoundedSource(uri: string, bounds: PipelineBounds, context: SourceContext = {}): Source {
  try {
    return new GuardedSource(openSource(uri, { ...context, credentialsRoot: bounds.credentialsRoot }), uri, bounds);
  } catch (error) {
    if (error instanceof BadUriError) return new FailedEndpoint(error);
    throw error;
  }
}

/** Opens a changefeed's sink within `bounds`, as {@link openBoundedSource}. */
export function openBoundedSink(uri: string, context: SinkContext, bounds: PipelineBounds): Sink {
  try {
    return new GuardedSink(openSink(uri, { ...context, fileSinkRoot: bounds.fileSinkRoot, credentialsRoot: bounds.credentialsRoot }), uri, bounds);
  } catch (error) {
    if (error instanceof BadUriError) return new FailedEndpoint(error);
    throw error;
  }
}
