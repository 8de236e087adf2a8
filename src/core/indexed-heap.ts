/**
 * A binary min-heap of items that can be updated or removed in place, O(log n) each,
 * with O(1) access to the minimum. The heap does not own a map from item to position:
 * each item stores its own slot through the `slot` accessor given at construction (as
 * {@link IndexedList} does with `primaryIndex`), so one item can sit in several heaps
 * (one slot field each) for one array entry per heap instead of a `Map` entry.
 *
 * The agent keeps two, over its replicating spans, so that its watermark (min
 * checkpoint and min max(resolved, checkpoint)) never rescans every span held.
 */

/** Where an item keeps its position in one heap: -1 when in none. */
export interface HeapSlot<T> {
  get(item: T): number;
  set(item: T, slot: number): void;
}

export class IndexedMinHeap<T> {
  private readonly items: T[] = [];
  private readonly less: (a: T, b: T) => boolean;
  private readonly slot: HeapSlot<T>;

  /** `less(a, b)`: a orders strictly before b; it must read only what {@link update} is told about. */
  constructor(less: (a: T, b: T) => boolean, slot: HeapSlot<T>) {
    this.less = less;
    this.slot = slot;
  }

  get size(): number {
    return this.items.length;
  }

  /** The least item, or undefined when empty. */
  peek(): T | undefined {
    return this.items[0];
  }

  /** Whether the item is in this heap (its slot points at it). */
  has(item: T): boolean {
    const slot = this.slot.get(item);
    return slot >= 0 && this.items[slot] === item;
  }

  /** Adds an item that is not in this heap. */
  push(item: T): void {
    if (this.has(item)) throw new RangeError('push of an item already in the heap');
    const slot = this.items.length;
    this.items.push(item);
    this.slot.set(item, slot);
    this.up(slot);
  }

  /** Restores the order after the item's key changed (either way). */
  update(item: T): void {
    const slot = this.slot.get(item);
    if (!this.has(item)) throw new RangeError('update of an item not in the heap');
    if (!this.up(slot)) this.down(slot);
  }

  /** Removes an item that is in this heap. */
  remove(item: T): void {
    if (!this.has(item)) throw new RangeError('remove of an item not in the heap');
    const slot = this.slot.get(item);
    const last = this.items.pop() as T;
    this.slot.set(item, -1);
    if (last === item) return;
    this.items[slot] = last;
    this.slot.set(last, slot);
    if (!this.up(slot)) this.down(slot);
  }

  /**
   * The `k` least items, least first, without changing the heap: a walk down from the
   * root that only ever looks at the children of items already taken, O(k log k).
   */
  smallest(k: number): T[] {
    const taken: T[] = [];
    if (k <= 0 || this.items.length === 0) return taken;
    // A small heap of slots to look at next, ordered by their items.
    const frontier: number[] = [0];
    const before = (a: number, b: number): boolean => this.less(this.items[a] as T, this.items[b] as T);
    while (taken.length < k && frontier.length > 0) {
      const slot = popSlot(frontier, before);
      taken.push(this.items[slot] as T);
      for (const child of [2 * slot + 1, 2 * slot + 2]) if (child < this.items.length) pushSlot(frontier, child, before);
    }
    return taken;
  }

  /** Empties the heap, marking every item as in none. */
  clear(): void {
    for (const item of this.items) this.slot.set(item, -1);
    this.items.length = 0;
  }

  /** The items in heap order (not sorted), for tests and invariant checks. */
  values(): IterableIterator<T> {
    return this.items.values();
  }

  /** Moves the item at `slot` towards the root; true when it moved. */
  private up(slot: number): boolean {
    const item = this.items[slot] as T;
    let at = slot;
    while (at > 0) {
      const parentAt = (at - 1) >> 1;
      const parent = this.items[parentAt] as T;
      if (!this.less(item, parent)) break;
      this.items[at] = parent;
      this.slot.set(parent, at);
      at = parentAt;
    }
    if (at === slot) return false;
    this.items[at] = item;
    this.slot.set(item, at);
    return true;
  }

  private down(slot: number): void {
    const item = this.items[slot] as T;
    const n = this.items.length;
    let at = slot;
    for (;;) {
      const left = 2 * at + 1;
      if (left >= n) break;
      const right = left + 1;
      let child = left;
      if (right < n && this.less(this.items[right] as T, this.items[left] as T)) child = right;
      const least = this.items[child] as T;
      if (!this.less(least, item)) break;
      this.items[at] = least;
      this.slot.set(least, at);
      at = child;
    }
    if (at === slot) return;
    this.items[at] = item;
    this.slot.set(item, at);
  }
}

function pushSlot(heap: number[], slot: number, before: (a: number, b: number) => boolean): void {
  heap.push(slot);
  let i = heap.length - 1;
  while (i > 0) {
    const parent = (i - 1) >> 1;
    if (!before(heap[i] as number, heap[parent] as number)) break;
    [heap[i], heap[parent]] = [heap[parent] as number, heap[i] as number];
    i = parent;
  }
}

function popSlot(heap: number[], before: (a: number, b: number) => boolean): number {
  const top = heap[0] as number;
  const last = heap.pop() as number;
  if (heap.length === 0) return top;
  heap[0] = last;
  let i = 0;
  for (;;) {
    const left = 2 * i + 1;
    const right = left + 1;
    let least = i;
    if (left < heap.length && before(heap[left] as number, heap[least] as number)) least = left;
    if (right < heap.length && before(heap[right] as number, heap[least] as number)) least = right;
    if (least === i) return top;
    [heap[i], heap[least]] = [heap[least] as number, heap[i] as number];
    i = least;
  }
}
