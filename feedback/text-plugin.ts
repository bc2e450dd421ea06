/**
 * One rule for text in both dialects: U+0000 (NUL) is stored as U+FFFD (the replacement
 * character). PostgreSQL's text type cannot hold NUL (`invalid byte sequence for encoding "UTF8":
 * 0x00`), SQLite can; a small model can sample NUL, and a client can send it. Without one rule
 * the same reply would be stored on SQLite and refused with `internal_error` on PostgreSQL, and
 * an export from one store would not import into the other.
 *
 * The plugin rewrites every string value a query binds (inserts, updates, filters, raw `sql`
 * values), so no write path can forget it, and filters match what was stored.
 */
import {
  OperationNodeTransformer,
  type KyselyPlugin,
  type PluginTransformQueryArgs,
  type PluginTransformResultArgs,
  type PrimitiveValueListNode,
  type QueryResult,
  type RootOperationNode,
  type UnknownRow,
  type ValueNode,
} from 'kysely';

const NUL = /\u0000/g;

/** `s` as it is stored: every NUL replaced by U+FFFD. */
export function storableText(s: string): string {
  return s.includes('\u0000') ? s.replace(NUL, '\uFFFD') : s;
}

function storable(v: unknown): unknown {
  return typeof v === 'string' ? storableText(v) : v;
}

class TextTransformer extends OperationNodeTransformer {
  protected override transformValue(node: ValueNode): ValueNode {
    const v = storable(node.value);
    return v === node.value ? super.transformValue(node) : { ...super.transformValue(node), value: v };
  }

  protected override transformPrimitiveValueList(node: PrimitiveValueListNode): PrimitiveValueListNode {
    const base = super.transformPrimitiveValueList(node);
    return base.values.some((v) => typeof v === 'string' && v.includes('\u0000')) ? { ...base, values: base.values.map(storable) } : base;
  }
}

/** The Kysely plugin of {@link storableText}, installed on every store by `openStore`. */
export class StorableTextPlugin implements KyselyPlugin {
  readonly #transformer = new TextTransformer();

  transformQuery(args: PluginTransformQueryArgs): RootOperationNode {
    return this.#transformer.transformNode(args.node);
  }

  async transformResult(args: PluginTransformResultArgs): Promise<QueryResult<UnknownRow>> {
    return args.result;
  }
}
