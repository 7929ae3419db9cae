//! The only code in the agent that needs `unsafe`: the backdoor `in` instruction, CPUID, a
//! fork to probe access safely, and `iopl`.
#![allow(unsafe_code)]

use super::rpci::{Port, Regs, CMD_GETVERSION, MAGIC, PORT};
use super::Access;

/// The real I/O port.
#[derive(Debug)]
pub struct IoPort {
    access: Access,
}

impl IoPort {
    /// Only [`super::Backdoor::probe`] makes one, after the CPU check and the access probe.
    pub(super) fn new(access: Access) -> Self {
        Self { access }
    }
}

thread_local! {
    static IOPL_RAISED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

impl Port for IoPort {
    fn call(&mut self, regs: Regs) -> Regs {
        // The I/O privilege level belongs to a thread, and a tokio task may run on any; raise
        // it on the calling thread before the first call there.
        if self.access == Access::Privileged && !IOPL_RAISED.with(|c| c.get()) {
            if raise_iopl() {
                IOPL_RAISED.with(|c| c.set(true));
            } else {
                // Without the privilege the `in` would fault: report a failed open instead.
                return Regs::default();
            }
        }
        raw_call(regs)
    }
}

#[cfg(target_arch = "x86_64")]
fn raise_iopl() -> bool {
    // SAFETY: iopl changes this thread's I/O privilege level; it has no memory effects. It
    // fails with EPERM without CAP_SYS_RAWIO, and the result is checked.
    unsafe { nix::libc::iopl(3) == 0 }
}

#[cfg(not(target_arch = "x86_64"))]
fn raise_iopl() -> bool {
    false
}

#[cfg(target_arch = "x86_64")]
fn raw_call(regs: Regs) -> Regs {
    let mut rbx = u64::from(regs.ebx);
    let (mut eax, mut ecx, mut edx, mut esi, mut edi) =
        (regs.eax, regs.ecx, regs.edx, regs.esi, regs.edi);
    // SAFETY: only reached after `is_vmware_hypervisor()` and `probe_access()` showed that the
    // hypervisor services port 0x5658 for this process, so the `in` does not fault. It reads
    // and writes only the named registers; rbx is reserved by LLVM, so it is swapped through a
    // scratch register and restored. No memory is touched and the stack is not used.
    unsafe {
        std::arch::asm!(
            "xchg {b}, rbx",
            "in eax, dx",
            "xchg {b}, rbx",
            b = inout(reg) rbx,
            inout("eax") eax,
            inout("ecx") ecx,
            inout("edx") edx,
            inout("esi") esi,
            inout("edi") edi,
            options(nostack),
        );
    }
    Regs { eax, ebx: rbx as u32, ecx, edx, esi, edi }
}

#[cfg(not(target_arch = "x86_64"))]
fn raw_call(regs: Regs) -> Regs {
    // Never reached: is_vmware_hypervisor() is false off x86_64.
    regs
}

/// CPUID says: hypervisor present (leaf 1, ecx bit 31) and its vendor leaf 0x40000000 is
/// "VMwareVMware".
#[cfg(target_arch = "x86_64")]
pub fn is_vmware_hypervisor() -> bool {
    use std::arch::x86_64::__cpuid;
    // SAFETY: CPUID exists on every x86_64 CPU and has no side effects; leaf 0x40000000 is
    // only queried when the hypervisor bit says it is defined.
    #[allow(unused_unsafe)]
    let (leaf1, hv) = unsafe {
        let leaf1 = __cpuid(1);
        if leaf1.ecx & (1 << 31) == 0 {
            return false;
        }
        (leaf1, __cpuid(0x4000_0000))
    };
    let _ = leaf1;
    let mut vendor = [0u8; 12];
    vendor[0..4].copy_from_slice(&hv.ebx.to_le_bytes());
    vendor[4..8].copy_from_slice(&hv.ecx.to_le_bytes());
    vendor[8..12].copy_from_slice(&hv.edx.to_le_bytes());
    &vendor == b"VMwareVMware"
}

/// Off x86_64 there is no backdoor.
#[cfg(not(target_arch = "x86_64"))]
pub fn is_vmware_hypervisor() -> bool {
    false
}

/// One GETVERSION call: the host answers with the magic in ebx.
fn getversion_works() -> bool {
    let out = raw_call(Regs {
        eax: MAGIC,
        ebx: !MAGIC,
        ecx: CMD_GETVERSION,
        edx: u32::from(PORT),
        esi: 0,
        edi: 0,
    });
    out.ebx == MAGIC
}

/// Runs GETVERSION in a forked child so that a fault kills the child, not us.
fn probe_in_child() -> bool {
    use nix::sys::wait::{waitpid, WaitStatus};
    use nix::unistd::{fork, ForkResult};
    // SAFETY: the child only executes the backdoor call and `_exit`s; it does not allocate,
    // lock or touch state shared with other threads, which is what makes fork in a threaded
    // process unsafe.
    match unsafe { fork() } {
        Ok(ForkResult::Child) => {
            let code = if getversion_works() { 0 } else { 1 };
            // SAFETY: `_exit` ends the child without running destructors or atexit handlers
            // that belong to the parent.
            unsafe { nix::libc::_exit(code) }
        }
        Ok(ForkResult::Parent { child }) => {
            matches!(waitpid(child, None), Ok(WaitStatus::Exited(_, 0)))
        }
        Err(_) => false,
    }
}

/// Finds how this process can reach the backdoor: unprivileged first, then `iopl(3)`.
/// Call only after [`is_vmware_hypervisor`].
pub fn probe_access() -> Option<Access> {
    if probe_in_child() {
        return Some(Access::Unprivileged);
    }
    if raise_iopl() && probe_in_child() {
        IOPL_RAISED.with(|c| c.set(true));
        return Some(Access::Privileged);
    }
    None
}
