/**
 * Request-body validation from the OpenAPI document (`api/openapi.json`): every operation
 * with a JSON request body has its schema compiled once, at startup, with ajv, so the
 * document is the first gate a body passes and cannot drift from what is enforced. The
 * handlers still validate by hand (with messages that name the rule); the schemas only
 * refuse earlier, and a body that passes them may still be refused by a handler.
 */
import { Ajv2020 } from 'ajv/dist/2020.js';
import type { ErrorObject, ValidateFunction } from 'ajv/dist/2020.js';

/** The parts of an OpenAPI document that describe request bodies. */
interface OpenApiDocument {
  readonly paths: Record<string, Record<string, unknown>>;
}

interface OperationObject {
  readonly requestBody?: { readonly required?: boolean; readonly content?: Record<string, { readonly schema?: unknown }> };
}

/** The checked request body of one operation. */
export interface RequestSchema {
  /** Whether the operation needs a body at all (OpenAPI `requestBody.required`). */
  readonly required: boolean;
  /** Undefined when `body` conforms; otherwise why not, as one readable sentence. */
  check(body: unknown): string | undefined;
}

/** Bound on the schema errors named in one answer: a bad 10,000-table list stays short. */
export const schemaErrorsShownMax = 5;

const methods = ['get', 'put', 'post', 'delete', 'patch', 'options', 'head'] as const;

/** The key of an operation: `POST /api/v1/changefeeds/{}` (path parameters unnamed). */
export function operationKey(method: string, template: string): string {
  return `${method.toUpperCase()} ${template.replace(/\{[^}]+\}/g, '{}')}`;
}

/**
 * Compiles the request-body schema of every operation of `doc` that has one, keyed by
 * `operationKey`. `$ref`s resolve against the document's `components/schemas`. Throws
 * when an operation declares a request body with no JSON schema: the document is wrong.
 */
export function compileRequestSchemas(doc: unknown): Map<string, RequestSchema> {
  const document = doc as OpenApiDocument;
  const ajv = new Ajv2020({ strict: false, allErrors: true });
  // The whole document under one id, so that "#/components/..." refs resolve in it.
  const documentId = 'spanfeed-openapi.json';
  ajv.addSchema(document as object, documentId);
  const schemas = new Map<string, RequestSchema>();
  for (const [template, item] of Object.entries(document.paths)) {
    for (const method of methods) {
      const operation = item[method] as OperationObject | undefined;
      const requestBody = operation?.requestBody;
      if (requestBody === undefined) continue;
      const key = operationKey(method, template);
      const schema = requestBody.content?.['application/json']?.schema;
      if (schema === undefined) throw new Error(`${key} declares a request body without an application/json schema`);
      const rooted = JSON.parse(JSON.stringify(schema).replaceAll('"#/components/', `"${documentId}#/components/`)) as object;
      const validate = ajv.compile(rooted);
      schemas.set(key, { required: requestBody.required === true, check: (body) => (validate(body) ? undefined : describeErrors(validate)) });
    }
  }
  return schemas;
}

/** Ajv's errors as one sentence: `/tables/0/name must be string; ...`. */
function describeErrors(validate: ValidateFunction): string {
  const errors = validate.errors ?? [];
  const parts = errors.slice(0, schemaErrorsShownMax).map(describeError);
  if (errors.length > schemaErrorsShownMax) parts.push(`and ${errors.length - schemaErrorsShownMax} more`);
  return parts.length === 0 ? 'the body does not match the schema' : parts.join('; ');
}

function describeError(error: ErrorObject): string {
  const where = error.instancePath === '' ? 'the body' : error.instancePath;
  const params = error.params as Record<string, unknown>;
  // Ajv does not name the field it refuses; the user needs it.
  if (error.keyword === 'additionalProperties') return `${where} must not have the field ${JSON.stringify(params.additionalProperty)}`;
  return `${where} ${error.message ?? 'is invalid'}`;
}
