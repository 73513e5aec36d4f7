//! Drives random sequences of C ABI calls: create/destroy clients, open,
//! close and fault devices, submit (valid and invalid) requests, cancel,
//! get/put handles (live, dead and made-up), allocate and free pages.
//! Nothing may crash, hang or leak a panic; every error is a negative errno.
#![no_main]

use dmio::ffi::types::*;
use dmio::ffi::*;
use libfuzzer_sys::fuzz_target;
use std::ffi::CString;
use std::os::raw::c_void;
use std::ptr::null_mut;
use std::sync::{Mutex, OnceLock};

fn files() -> &'static Vec<CString> {
    static F: OnceLock<Vec<CString>> = OnceLock::new();
    F.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("dmio-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        (0..3)
            .map(|i| {
                let p = dir.join(format!("dev{i}"));
                std::fs::write(&p, vec![0u8; 256 * 1024]).unwrap();
                CString::new(p.to_str().unwrap()).unwrap()
            })
            .collect()
    })
}

/// Devices open right now. A watchdog clears their faults every few
/// milliseconds, so IO held by `hang` always ends and a `dm_io` that waits
/// for memory (as documented) or a SYNC call on a hung device returns.
fn watched() -> &'static Mutex<Vec<usize>> {
    static W: OnceLock<Mutex<Vec<usize>>> = OnceLock::new();
    W.get_or_init(|| {
        std::thread::spawn(|| loop {
            std::thread::sleep(std::time::Duration::from_millis(5));
            let devs = watched().lock().unwrap().clone();
            for d in devs {
                // A closed device is refused with -EINVAL, never touched.
                clear_faults(d as *mut block_device);
            }
        });
        Mutex::new(Vec::new())
    })
}

/// Clears a device's faults, so IO it holds resumes. Any `d` will do: an
/// unknown or closed device is refused with -EINVAL, never dereferenced.
fn clear_faults(d: *mut block_device) {
    // SAFETY: the spec is a NUL-terminated string literal.
    unsafe { dm_io_bdev_set_faults(d, c"".as_ptr()) };
}

unsafe extern "C" fn notify(_st: *mut dm_io_region_state, _ctx: *mut c_void) {}

const SPECS: &[&str] = &[
    "",
    "none",
    "delay 1ms",
    "hang",
    "error reads errno=EIO",
    "hang writes sectors=0-7",
    "flakey up=1ms down=1ms",
    "flakey up=1ms down=1ms drop_writes",
    "delay",
    "bogus",
    "error errno=0",
    "delay read=1ms write=2ms; error writes sectors=8-15",
];

struct Bytes<'a>(&'a [u8]);
impl Bytes<'_> {
    fn u8(&mut self) -> u8 {
        let (b, rest) = self
            .0
            .split_first()
            .map(|(b, r)| (*b, r))
            .unwrap_or((0, &[]));
        self.0 = rest;
        b
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }
}

fuzz_target!(|data: &[u8]| {
    let mut b = Bytes(data);
    let mut clients: Vec<*mut dm_io_client> = Vec::new();
    let mut devs: Vec<*mut block_device> = Vec::new();
    let mut handles: Vec<*mut dm_io_handle> = Vec::new();
    let mut pages: Vec<*mut page> = Vec::new();
    // Caller memory lives until every client is destroyed (end of input).
    let mut bufs: Vec<Vec<u8>> = Vec::new();
    // Clients that accepted a DM_IO_ZERO_COPY request: their destroy waits
    // for that IO (documented), so faults are cleared first.
    let mut zero_copy: Vec<*mut dm_io_client> = Vec::new();
    let pick = |b: &mut Bytes, n: usize| if n == 0 { 0 } else { b.u8() as usize % n };
    let mut steps = 0;
    while !b.0.is_empty() && steps < 64 {
        steps += 1;
        match b.u8() % 12 {
            0 if clients.len() < 3 => {
                let mut cl = null_mut();
                let (d, m, s) = (b.u8() as u32 % 5, b.u8() as u32 % 5, b.u32() % (256 * 1024));
                // SAFETY: `cl` is a local, writable `*mut dm_io_client`.
                if unsafe { dm_io_client_create(d, m, s, &mut cl) } == 0 {
                    clients.push(cl);
                }
            }
            1 if !clients.is_empty() => {
                let i = pick(&mut b, clients.len());
                let cl = clients.swap_remove(i);
                if zero_copy.contains(&cl) {
                    for &d in &devs {
                        clear_faults(d);
                    }
                }
                dm_io_client_destroy(cl);
            }
            2 if devs.len() < 4 => {
                let f = &files()[pick(&mut b, 3)];
                let spec = CString::new(SPECS[pick(&mut b, SPECS.len())]).unwrap();
                let mut d = null_mut();
                // SAFETY: `f` and `spec` are NUL-terminated strings, `d` a
                // local, writable `*mut block_device`.
                let rc = unsafe {
                    if b.u8() % 2 == 0 {
                        dm_io_bdev_open(f.as_ptr(), b.u8() as u32 % 4, &mut d)
                    } else {
                        dm_io_bdev_open_faulty(f.as_ptr(), spec.as_ptr(), &mut d)
                    }
                };
                if rc == 0 {
                    devs.push(d);
                    watched().lock().unwrap().push(d as usize);
                }
            }
            3 if !devs.is_empty() => {
                let i = pick(&mut b, devs.len());
                // Clear faults first so nothing stays held forever.
                clear_faults(devs[i]);
                let d = devs.swap_remove(i);
                watched().lock().unwrap().retain(|&x| x != d as usize);
                dm_io_bdev_close(d);
            }
            4 if !devs.is_empty() => {
                let spec = CString::new(SPECS[pick(&mut b, SPECS.len())]).unwrap();
                let d = devs[pick(&mut b, devs.len())];
                // SAFETY: `spec` is a NUL-terminated string.
                unsafe { dm_io_bdev_set_faults(d, spec.as_ptr()) };
            }
            5 | 6 if !clients.is_empty() => {
                let cl = clients[pick(&mut b, clients.len())];
                let n = 1 + b.u8() as usize % 3;
                let mut regs = Vec::new();
                for _ in 0..n {
                    let bdev = if devs.is_empty() || b.u8() % 8 == 0 {
                        b.u32() as usize as *mut block_device
                    } else {
                        devs[pick(&mut b, devs.len())]
                    };
                    regs.push(dm_io_region {
                        bdev,
                        sector: (b.u8() as u64 % 64) * 8,
                        count: b.u8() as u64 % 33,
                    });
                }
                let len = 64 * 1024;
                bufs.push(vec![0x5A; len]);
                let buf = bufs.last_mut().unwrap().as_mut_ptr();
                let rw = [
                    DM_IO_READ,
                    DM_IO_WRITE,
                    DM_IO_WRITE | DM_IO_FLUSH,
                    DM_IO_READ | DM_IO_READ_ANY,
                    DM_IO_WRITE | DM_IO_FUA,
                    0x1000,
                ][pick(&mut b, 6)]
                    | if b.u8() % 3 == 0 { DM_IO_SYNC } else { 0 };
                let mut ctrl = dm_io_control {
                    memory: dm_io_memory {
                        r#type: [DM_IO_VM_T, 7][pick(&mut b, 2)],
                        ptr: dm_io_memory_ptr {
                            vma: buf as *mut c_void,
                        },
                        offset: b.u8() as u32 % 16,
                    },
                    rw,
                    notify: if rw & DM_IO_SYNC != 0 && b.u8() % 2 == 0 {
                        None
                    } else {
                        Some(notify)
                    },
                    context: null_mut(),
                    client: cl,
                    timeout: if rw & DM_IO_SYNC != 0 {
                        1 + b.u8() as u64 % 20
                    } else {
                        b.u8() as u64 % 20
                    },
                    // Zero-copy only asynchronous: a SYNC zero-copy request
                    // on a hung device waits for it, by contract.
                    flags: b.u8() as u32 % if rw & DM_IO_SYNC != 0 { 2 } else { 4 },
                };
                let mut h = null_mut();
                // SAFETY: `ctrl` and `n` regions are locals, read during the
                // call. The memory is `len` bytes of a buffer in `bufs`,
                // more than any region's 32 sectors plus the 15-byte offset,
                // and `bufs` lives until every client is destroyed (destroy
                // delivers every final notification, and waits for
                // zero-copy IO). `notify` does nothing with its null
                // context, on any thread. `h` is a local.
                let rc = unsafe { dm_io(&mut ctrl, n as u32, regs.as_mut_ptr(), &mut h) };
                assert!(rc <= 0, "dm_io returned {rc}");
                if rc == 0 && ctrl.flags & DM_IO_ZERO_COPY != 0 && !zero_copy.contains(&cl) {
                    zero_copy.push(cl);
                }
                if rc == 0 && !h.is_null() {
                    handles.push(h);
                }
            }
            7 if !clients.is_empty() => {
                let cl = clients[pick(&mut b, clients.len())];
                let h = if handles.is_empty() || b.u8() % 4 == 0 {
                    b.u32() as usize as *mut dm_io_handle
                } else {
                    handles[pick(&mut b, handles.len())]
                };
                assert!(dm_io_cancel_by_handle(cl, h) >= -libc::EINVAL);
            }
            8 if !clients.is_empty() && !devs.is_empty() => {
                let cl = clients[pick(&mut b, clients.len())];
                let d = devs[pick(&mut b, devs.len())];
                assert!(dm_io_cancel_by_device(cl, d) >= 0);
            }
            9 => {
                let h = if handles.is_empty() || b.u8() % 4 == 0 {
                    b.u32() as usize as *mut dm_io_handle
                } else {
                    handles[pick(&mut b, handles.len())]
                };
                if b.u8() % 2 == 0 {
                    dm_io_handle_get(h);
                } else {
                    dm_io_handle_put(h);
                }
            }
            10 => {
                if b.u8() % 2 == 0 || pages.is_empty() {
                    pages.push(dm_io_page_alloc());
                } else {
                    let i = pick(&mut b, pages.len());
                    // Sometimes free twice (must be ignored).
                    let p = if b.u8() % 4 == 0 {
                        pages[i]
                    } else {
                        pages.swap_remove(i)
                    };
                    // SAFETY: no request's memory is a page (requests use
                    // `bufs`), and pages are never read or written here.
                    unsafe { dm_io_page_free(p) };
                }
            }
            _ => {
                if !clients.is_empty() {
                    let mut st = dm_io_stats::default();
                    let cl = clients[pick(&mut b, clients.len())];
                    let size = b.u8() as usize * 2;
                    let size = size.min(std::mem::size_of::<dm_io_stats>());
                    // SAFETY: `st` is a local `dm_io_stats`, `size` bytes at most.
                    unsafe { dm_io_client_stats(cl, &mut st, size) };
                }
            }
        }
    }
    // Tear down: clear faults (held IO resumes), destroy clients (cancels
    // and delivers everything), then the caller's memory may go.
    for &d in &devs {
        clear_faults(d);
    }
    for cl in clients {
        dm_io_client_destroy(cl);
    }
    for d in devs {
        watched().lock().unwrap().retain(|&x| x != d as usize);
        dm_io_bdev_close(d);
    }
    for h in handles {
        while !dm_io_handle_put(h).is_null() {}
    }
    for p in pages {
        // SAFETY: as above: no request used a page; all are final anyway.
        unsafe { dm_io_page_free(p) };
    }
    drop(bufs);
});

const DM_IO_VM_T: i32 = dm_io_mem_type::DM_IO_VM as i32;
