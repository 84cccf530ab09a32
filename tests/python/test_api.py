#!/usr/bin/env python3
"""The memsleep Python package on the host backend: regions, alloc,
release/resume, backup contents, zeros, stats and errors, as a Python user
sees them. Needs no GPU and no torch.

  MEMSLEEP_LIB_DIR=<dir of libmemsleep.so.0> test_api.py [unittest args]

The package is imported from python/ of this source tree.
"""
import ctypes
import os
import sys
import threading
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "python"))
import memsleep  # noqa: E402
from memsleep import MemsleepError  # noqa: E402

MIB = 1 << 20
_counter = [0]


def fresh_tag(stem):
    """A tag no other test used (tags live as long as the process)."""
    _counter[0] += 1
    return "%s-%d" % (stem, _counter[0])


def rss_bytes():
    with open("/proc/self/smaps_rollup") as f:
        for line in f:
            if line.startswith("Rss:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no Rss line in /proc/self/smaps_rollup")


class Regions(unittest.TestCase):
    def test_region_gives_its_tag_and_policy_to_untagged_allocations(self):
        tag = fresh_tag("weights")
        with memsleep.region(tag, backup=True):
            self.assertEqual(memsleep.current_region(), memsleep.Region(tag, True, False))
            a = memsleep.alloc(MIB)
        self.assertIsNone(memsleep.current_region())
        self.assertEqual((a.tag, a.backup, a.zero, a.device), (tag, True, False, memsleep.HOST))
        self.assertEqual(memsleep.stats(tag).allocations, 1)
        a.free()
        self.assertEqual(memsleep.stats(tag).allocations, 0)

    def test_regions_nest_and_the_innermost_decides(self):
        outer, inner = fresh_tag("outer"), fresh_tag("inner")
        with memsleep.region(outer, backup=True):
            with memsleep.region(inner, zero=True):
                self.assertEqual(memsleep.current_region(), memsleep.Region(inner, False, True))
                b = memsleep.alloc(4096)
            self.assertEqual(memsleep.current_region(), memsleep.Region(outer, True, False))
            a = memsleep.alloc(4096)
        self.assertEqual((a.tag, b.tag), (outer, inner))
        self.assertTrue(b.zero and not b.backup and a.backup)
        a.free()
        b.free()

    def test_regions_are_per_thread(self):
        mine, theirs = fresh_tag("mine"), fresh_tag("theirs")
        seen = {}
        entered = threading.Event()
        leave = threading.Event()

        def other():
            seen["before"] = memsleep.current_region()
            with memsleep.region(theirs):
                entered.set()
                leave.wait(10)
                seen["alloc"] = memsleep.alloc(4096)

        with memsleep.region(mine):
            t = threading.Thread(target=other)
            t.start()
            self.assertTrue(entered.wait(10))
            self.assertEqual(memsleep.current_region().tag, mine)
            a = memsleep.alloc(4096)
            leave.set()
            t.join(10)
        self.assertIsNone(seen["before"])
        self.assertEqual((a.tag, seen["alloc"].tag), (mine, theirs))
        a.free()
        seen["alloc"].free()

    def test_an_exception_inside_a_region_closes_it(self):
        with self.assertRaises(KeyError):
            with memsleep.region(fresh_tag("boom")):
                raise KeyError("x")
        self.assertIsNone(memsleep.current_region())

    def test_bad_region_raises_and_opens_nothing(self):
        with self.assertRaises(MemsleepError) as cm:
            with memsleep.region("bad tag!"):
                self.fail("entered a region with an invalid tag")
        self.assertEqual(cm.exception.code, memsleep.EINVAL)
        self.assertIn("bad tag!", cm.exception.message)
        with self.assertRaises(MemsleepError) as cm:
            with memsleep.region(fresh_tag("both"), backup=True, zero=True):
                self.fail("entered a region with backup and zero")
        self.assertEqual(cm.exception.code, memsleep.EINVAL)
        self.assertIsNone(memsleep.current_region())

    def test_alloc_without_tag_outside_a_region_is_an_error(self):
        with self.assertRaises(MemsleepError) as cm:
            memsleep.alloc(4096)
        self.assertEqual(cm.exception.code, memsleep.EINVAL)
        self.assertIn("no region", cm.exception.message)


class SleepWake(unittest.TestCase):
    def test_backup_contents_survive_at_the_same_address(self):
        tag = fresh_tag("weights")
        with memsleep.region(tag, backup=True):
            blocks = [memsleep.alloc(size) for size in (4096, 3 * MIB + 17, 8 * MIB)]
        data = [os.urandom(b.size) for b in blocks]
        for b, d in zip(blocks, data):
            b.write(d)
        ptrs = [b.ptr for b in blocks]
        for cycle in range(3):
            memsleep.release(tag)
            self.assertTrue(memsleep.is_asleep(tag))
            s = memsleep.stats(tag)
            self.assertEqual(s.resident_bytes, 0)
            self.assertGreaterEqual(s.backup_bytes, sum(b.size for b in blocks))
            memsleep.resume(tag)
            self.assertFalse(memsleep.is_asleep(tag))
            for b, d in zip(blocks, data):
                self.assertEqual(b.read(), d, "contents changed in cycle %d" % cycle)
        self.assertEqual([b.ptr for b in blocks], ptrs)
        self.assertEqual(memsleep.stats(tag).backup_bytes, 0)
        for b in blocks:
            b.free()

    def test_zero_memory_reads_zeros_after_resume(self):
        tag = fresh_tag("kv")
        with memsleep.region(tag, zero=True):
            a = memsleep.alloc(2 * MIB)
        a.write(b"\xff" * a.size)
        memsleep.release(tag)
        memsleep.resume(tag)
        self.assertEqual(a.read(), bytes(a.size))
        a.free()

    def test_release_without_backup_gives_the_pages_back(self):
        tag = fresh_tag("kv")
        size = 64 * MIB
        a = memsleep.alloc(size, tag=tag)
        ctypes.memset(a.ptr, 0x5A, size)  # every page touched
        before = rss_bytes()
        memsleep.release(tag)
        dropped = before - rss_bytes()
        self.assertGreaterEqual(dropped, size * 90 // 100,
                                "RSS fell by %d bytes of %d released" % (dropped, size))
        self.assertEqual(memsleep.measure(tag).resident_bytes, 0)
        memsleep.resume(tag)
        self.assertEqual(memsleep.measure(tag).resident_bytes, memsleep.stats(tag).reserved_bytes)
        a.free()

    def test_discard_backup_keeps_no_copy(self):
        tag = fresh_tag("weights")
        a = memsleep.alloc(4 * MIB, tag=tag, backup=True)
        a.write(b"x" * a.size)
        memsleep.release(tag, discard_backup=True)
        self.assertEqual(memsleep.stats(tag).backup_bytes, 0)
        memsleep.resume(tag)
        a.write(b"usable again")
        self.assertEqual(a.read(0, 12), b"usable again")
        a.free()

    def test_no_tags_means_every_tag_and_a_list_works_too(self):
        t1, t2 = fresh_tag("a"), fresh_tag("b")
        a, b = memsleep.alloc(4096, tag=t1), memsleep.alloc(4096, tag=t2)
        memsleep.release()
        self.assertTrue(memsleep.is_asleep(t1) and memsleep.is_asleep(t2))
        memsleep.resume([t1, t2])
        self.assertFalse(memsleep.is_asleep(t1) or memsleep.is_asleep(t2))
        memsleep.release(t2)
        memsleep.resume()
        self.assertFalse(memsleep.is_asleep(t2))
        a.free()
        b.free()

    def test_stats_of_all_tags_add_up_and_tags_are_listed(self):
        t1, t2 = fresh_tag("s"), fresh_tag("s")
        a, b = memsleep.alloc(MIB, tag=t1), memsleep.alloc(2 * MIB, tag=t2)
        total = memsleep.stats()
        s1, s2 = memsleep.stats(t1), memsleep.stats(t2)
        self.assertGreaterEqual(total.reserved_bytes, s1.reserved_bytes + s2.reserved_bytes)
        self.assertEqual((s1.reserved_bytes, s2.reserved_bytes), (MIB, 2 * MIB))
        names = memsleep.tags()
        self.assertLess(names.index(t1), names.index(t2))
        a.free()
        b.free()

    def test_allocation_as_context_manager_frees(self):
        tag = fresh_tag("ctx")
        with memsleep.alloc(4096, tag=tag) as a:
            a.write(b"hi")
        self.assertEqual(memsleep.stats(tag).allocations, 0)
        self.assertIn("freed", repr(a))


class Errors(unittest.TestCase):
    def assertCode(self, code, fn, *args, **kwargs):
        with self.assertRaises(MemsleepError) as cm:
            fn(*args, **kwargs)
        e = cm.exception
        self.assertEqual(e.code, code, str(e))
        self.assertEqual(e.name, memsleep._lib.ERROR_NAMES[code])
        self.assertTrue(e.message, "no message from the library")
        self.assertIn(e.name, str(e))
        return e

    def test_invalid_tags(self):
        e = self.assertCode(memsleep.EINVAL, memsleep.alloc, 4096, tag="no spaces")
        self.assertIn("no spaces", e.message)
        self.assertCode(memsleep.EINVAL, memsleep.alloc, 4096, tag="x" * 64)
        self.assertCode(memsleep.EINVAL, memsleep.alloc, 4096, tag="")
        with self.assertRaises(TypeError):
            memsleep.alloc(4096, tag=b"bytes")

    def test_wrong_state(self):
        tag = fresh_tag("st")
        a = memsleep.alloc(4096, tag=tag)
        e = self.assertCode(memsleep.ESTATE, memsleep.resume, tag)
        self.assertIn(tag, e.message)
        memsleep.release(tag)
        self.assertCode(memsleep.ESTATE, memsleep.release, tag)
        self.assertCode(memsleep.ESTATE, memsleep.alloc, 4096, tag=tag)
        self.assertCode(memsleep.ESTATE, a.read)
        memsleep.resume(tag)
        a.free()

    def test_release_is_all_or_nothing(self):
        awake, asleep = fresh_tag("aw"), fresh_tag("as")
        a, b = memsleep.alloc(4096, tag=awake), memsleep.alloc(4096, tag=asleep)
        memsleep.release(asleep)
        self.assertCode(memsleep.ESTATE, memsleep.release, awake, asleep)
        self.assertFalse(memsleep.is_asleep(awake))
        self.assertCode(memsleep.EINVAL, memsleep.resume, asleep, asleep)
        self.assertTrue(memsleep.is_asleep(asleep))
        memsleep.resume(asleep)
        a.free()
        b.free()

    def test_unknown_tags_and_sizes(self):
        self.assertCode(memsleep.ENOTFOUND, memsleep.is_asleep, "never-used-tag")
        self.assertCode(memsleep.ENOTFOUND, memsleep.release, "never-used-tag")
        self.assertCode(memsleep.EINVAL, memsleep.alloc, 0, tag=fresh_tag("z"))
        a = memsleep.alloc(16, tag=fresh_tag("r"))
        self.assertCode(memsleep.EINVAL, a.read, 8, 16)
        a.free()
        self.assertCode(memsleep.EINVAL, a.read)

    def test_a_gpu_allocation_without_a_gpu_says_so(self):
        if os.path.exists("/dev/nvidia0"):
            self.skipTest("this machine has a GPU")
        e = self.assertCode(memsleep.EUNAVAIL, memsleep.alloc, MIB, tag=fresh_tag("g"), device=0)
        self.assertRegex(e.message, "(?i)cuda|device")

    def test_errors_pickle_with_their_code(self):
        import pickle
        e = pickle.loads(pickle.dumps(MemsleepError(memsleep.ESTATE, "tag \"x\" is asleep")))
        self.assertEqual((e.code, e.name, e.message), (memsleep.ESTATE, "ESTATE",
                                                       "tag \"x\" is asleep"))


if __name__ == "__main__":
    unittest.main(verbosity=2)
