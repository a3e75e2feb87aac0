"""`dr-lb up`'s journal keeps every line whole when threads print at once."""
from __future__ import annotations

import threading

from lb.director.journal import LineAtomic


class Recorder:
    def __init__(self) -> None:
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return len(text)

    def flush(self) -> None:
        pass


def test_a_line_begun_in_one_thread_is_not_split_by_another():
    out = Recorder()
    stream = LineAtomic(out)
    begun, other_done = threading.Event(), threading.Event()

    def health():
        stream.write("dr-lb: health: 198.18.0.12:80 is")   # print() writes text, then "\n"
        begun.set()
        other_done.wait(5)
        stream.write(" up")
        stream.write("\n")

    t = threading.Thread(target=health)
    t.start()
    begun.wait(5)
    print("dr-lb: ready on eth0", file=stream)
    other_done.set()
    t.join(5)
    assert out.writes == ["dr-lb: ready on eth0\n", "dr-lb: health: 198.18.0.12:80 is up\n"]


def test_many_threads_printing_give_only_whole_lines():
    out = Recorder()
    stream = LineAtomic(out)

    def talk(n):
        for i in range(200):
            print(f"thread {n} line {i}", file=stream)

    threads = [threading.Thread(target=talk, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    text = "".join(out.writes)
    assert sorted(text.splitlines()) == sorted(f"thread {n} line {i}"
                                               for n in range(8) for i in range(200))
    assert all(w.endswith("\n") for w in out.writes)
