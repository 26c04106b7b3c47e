// Names in the order they were last used, least recently used first: the eviction orders of
// slots and CPU copies, and the loaded set. Using a name moves it to the back of a linked list;
// a Map kept in order by deleting and re-adding the name instead leaves a deleted entry behind
// each time, and rebuilds its whole table (thousands of registered adapters) every few hundred
// uses, inside a step. Here the Map only finds a name's node and changes when a name enters or
// leaves.

interface Node<V> {
  readonly name: string;
  value: V;
  prev: Node<V> | null;
  next: Node<V> | null;
}

export class Recency<V = true> {
  private readonly nodes = new Map<string, Node<V>>();
  private head: Node<V> | null = null;
  private tail: Node<V> | null = null;

  get size(): number {
    return this.nodes.size;
  }

  has(name: string): boolean {
    return this.nodes.has(name);
  }

  get(name: string): V | undefined {
    return this.nodes.get(name)?.value;
  }

  /** Adds `name` as the most recently used; one already here keeps its place and takes `value`. */
  add(name: string, value: V): void {
    const node = this.nodes.get(name);
    if (node !== undefined) {
      node.value = value;
      return;
    }
    const added: Node<V> = { name, value, prev: null, next: null };
    this.nodes.set(name, added);
    this.append(added);
  }

  /** Makes `name` the most recently used (with `value` when given); false when it is not here. */
  use(name: string, value?: V): boolean {
    const node = this.nodes.get(name);
    if (node === undefined) return false;
    if (value !== undefined) node.value = value;
    if (node !== this.tail) {
      this.unlink(node);
      this.append(node);
    }
    return true;
  }

  delete(name: string): boolean {
    const node = this.nodes.get(name);
    if (node === undefined) return false;
    this.nodes.delete(name);
    this.unlink(node);
    return true;
  }

  /** Least recently used first. A name may be deleted while the walk is on it. */
  *entries(): IterableIterator<[string, V]> {
    for (let node = this.head; node !== null;) {
      const next = node.next;
      yield [node.name, node.value];
      node = next;
    }
  }

  *keys(): IterableIterator<string> {
    for (let node = this.head; node !== null;) {
      const next = node.next;
      yield node.name;
      node = next;
    }
  }

  private append(node: Node<V>): void {
    node.prev = this.tail;
    node.next = null;
    if (this.tail !== null) this.tail.next = node;
    else this.head = node;
    this.tail = node;
  }

  private unlink(node: Node<V>): void {
    if (node.prev !== null) node.prev.next = node.next;
    else this.head = node.next;
    if (node.next !== null) node.next.prev = node.prev;
    else this.tail = node.prev;
    node.prev = null;
    node.next = null;
  }
}
