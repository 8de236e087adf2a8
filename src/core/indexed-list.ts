/**
 * A list with O(1) append, O(1) removal and O(1) random pick, for items that store their
 * own index (swap-remove). The owner keeps one per capture of the spans it is primary
 * for: it costs one array slot per span, where a `Set` costs several words.
 */
export interface Indexed {
  primaryIndex: number;
}

export class IndexedList<T extends Indexed> {
  private readonly items: T[] = [];

  get length(): number {
    return this.items.length;
  }

  /** Appends an item that is in no list. */
  add(item: T): void {
    item.primaryIndex = this.items.length;
    this.items.push(item);
  }

  /** Removes an item that is in this list. */
  remove(item: T): void {
    const index = item.primaryIndex;
    const last = this.items.pop();
    if (last === undefined) throw new RangeError('remove from an empty list');
    if (last !== item) {
      this.items[index] = last;
      last.primaryIndex = index;
    }
    item.primaryIndex = -1;
  }

  /** The item at `index` (0 <= index < length). */
  at(index: number): T | undefined {
    return this.items[index];
  }

  /** Iterates over a copy-free view; do not add or remove while iterating. */
  values(): IterableIterator<T> {
    return this.items.values();
  }

  /** A copy, safe to iterate while the list changes. */
  toArray(): T[] {
    return this.items.slice();
  }
}
