//! `wharf serve` as a service manager sees it: logs on standard error,
//! without colour when that is not a terminal; readiness, reloads and
//! stops told to `NOTIFY_SOCKET`; listening sockets passed in
//! (`LISTEN_FDS`); and, run as root, `user =` switching users.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A directory for one test's files, removed at the end.
struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("wharf-cli-service-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        Dir(dir)
    }

    /// A configuration that needs no PostgreSQL: nothing connects to its
    /// database.
    fn ini(&self, extra: &str) -> PathBuf {
        let path = self.0.join("pgbouncer.ini");
        std::fs::write(
            &path,
            format!(
                "[databases]\napp = host=127.0.0.1 port=1\n[pgbouncer]\nlisten_addr = 127.0.0.1\n\
                 listen_port = {port}\nunix_socket_dir =\nauth_type = trust\nauth_file = /dev/null\n{extra}\n",
                port = free_port()
            ),
        )
        .expect("ini");
        path
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Stops a child left running by a failed assertion.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn logs_to_a_pipe_carry_no_colour_codes() {
    let dir = Dir::new("ansi");
    let ini = dir.ini("");
    let mut child = Running(
        Command::new(env!("CARGO_BIN_EXE_wharf"))
            .arg("serve")
            .arg(&ini)
            // Logs go to standard error, as PgBouncer's: a reader that
            // only sees standard output would never see "listening".
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn wharf"),
    );
    let stderr = child.0.stderr.take().expect("stderr");
    let mut seen = Vec::new();
    for line in BufReader::new(stderr).lines() {
        let line = line.expect("a log line");
        let done = line.contains("listening");
        seen.push(line);
        if done {
            break;
        }
    }
    let log = seen.join("\n");
    assert!(log.contains("listening"), "{log}");
    assert!(log.contains(" INFO "), "{log}");
    assert!(!log.contains('\u{1b}'), "{log:?}");
}

fn wharf(args: &[&std::ffi::OsStr]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_wharf"));
    command
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    command
}

/// A datagram socket standing in for systemd's notification socket.
fn notify_socket(dir: &Dir) -> (std::os::unix::net::UnixDatagram, PathBuf) {
    let path = dir.0.join("notify.sock");
    let socket = std::os::unix::net::UnixDatagram::bind(&path).expect("notify socket");
    // Writable by all, as systemd's /run/systemd/notify: a wharf that has
    // switched users still tells it about reloads and stops.
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o777))
        .expect("chmod");
    (socket, path)
}

fn next_message(socket: &std::os::unix::net::UnixDatagram) -> String {
    let mut buffer = [0u8; 512];
    let n = socket.recv(&mut buffer).expect("a notification");
    String::from_utf8_lossy(&buffer[..n]).into_owned()
}

fn signal(child: &Child, name: &str) {
    let status = Command::new("kill")
        .args([&format!("-{name}"), &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
}

#[test]
fn readiness_reloads_and_stops_are_told_to_notify_socket() {
    let dir = Dir::new("notify");
    let ini = dir.ini("");
    let (socket, path) = notify_socket(&dir);
    let mut child = Running(
        wharf(&["serve".as_ref(), ini.as_os_str()])
            .env("NOTIFY_SOCKET", &path)
            .spawn()
            .expect("spawn wharf"),
    );
    assert_eq!(next_message(&socket), "READY=1");
    signal(&child.0, "HUP");
    assert_eq!(next_message(&socket), "RELOADING=1");
    assert_eq!(next_message(&socket), "READY=1");
    signal(&child.0, "TERM");
    assert_eq!(next_message(&socket), "STOPPING=1");
    let status = child.0.wait().expect("wharf exits");
    assert!(status.success(), "{status}");
}

#[test]
fn a_listening_socket_passed_in_is_served_and_listen_addr_is_not_opened() {
    use std::io::{Read, Write};
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let dir = Dir::new("activation");
    let ini = dir.ini("");
    let text = std::fs::read_to_string(&ini).unwrap();
    let own_port: u16 = text
        .lines()
        .find_map(|l| l.strip_prefix("listen_port = "))
        .and_then(|p| p.trim().parse().ok())
        .expect("the ini's port");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listener");
    let passed = listener.local_addr().unwrap();
    let fd = listener.as_raw_fd();
    // LISTEN_PID must be wharf's own pid: the shell's, which exec keeps.
    let mut command = Command::new("sh");
    command
        .args([
            "-c",
            "LISTEN_PID=$$ LISTEN_FDS=1 exec \"$0\" serve \"$1\"",
            env!("CARGO_BIN_EXE_wharf"),
        ])
        .arg(&ini)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.0.join("wharf.log")).unwrap());
    // SAFETY: dup2 and fcntl are async-signal-safe, and the closure
    // touches nothing but descriptor numbers.
    unsafe {
        command.pre_exec(move || {
            // dup2 onto itself would keep close-on-exec: clear it instead.
            let done = if fd == 3 {
                libc::fcntl(3, libc::F_SETFD, 0)
            } else {
                libc::dup2(fd, 3)
            };
            if done < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let _child = Running(command.spawn().expect("spawn wharf"));
    drop(listener);
    // Answered by wharf (the test no longer holds the socket): an SSLRequest
    // gets 'N', as client_tls_sslmode = disable says.
    let log = || std::fs::read_to_string(dir.0.join("wharf.log")).unwrap_or_default();
    let mut client = std::net::TcpStream::connect(passed)
        .unwrap_or_else(|err| panic!("connect to the passed socket: {err}\n{}", log()));
    client
        .write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f])
        .unwrap();
    let mut answer = [0u8; 1];
    client.read_exact(&mut answer).expect("an answer");
    assert_eq!(&answer, b"N");
    let own = std::net::TcpStream::connect(("127.0.0.1", own_port));
    assert!(own.is_err(), "listen_port {own_port} is open too");
}

fn uid_of(pid: u32) -> Vec<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let line = status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .expect("a Uid line");
    line.split_whitespace()
        .skip(1)
        .map(|n| n.parse().unwrap())
        .collect()
}

#[test]
fn user_switches_after_binding_when_started_as_root() {
    if uid_of(std::process::id())[1] != 0 {
        eprintln!("skipped: switching users needs root (CI runs as root)");
        return;
    }
    let nobody = Command::new("id").args(["-u", "nobody"]).output().unwrap();
    let nobody: u32 = String::from_utf8_lossy(&nobody.stdout)
        .trim()
        .parse()
        .expect("a uid for nobody");
    let dir = Dir::new("user");
    let ini = dir.ini("user = nobody");
    let (socket, path) = notify_socket(&dir);
    let mut child = Running(
        wharf(&["serve".as_ref(), ini.as_os_str()])
            .env("NOTIFY_SOCKET", &path)
            .spawn()
            .expect("spawn wharf"),
    );
    assert_eq!(next_message(&socket), "READY=1");
    assert_eq!(uid_of(child.0.id()), vec![nobody; 4]);
    signal(&child.0, "TERM");
    assert!(child.0.wait().unwrap().success());
}

#[test]
fn an_unknown_user_is_an_error_on_its_line() {
    let dir = Dir::new("nouser");
    let ini = dir.ini("user = no-such-user-here");
    for command in ["check", "serve"] {
        let out = Command::new(env!("CARGO_BIN_EXE_wharf"))
            .arg(command)
            .arg(&ini)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{command}: {stderr}");
        assert!(
            stderr.contains(&format!(
                "{}:9: user = no-such-user-here: no such user",
                ini.display()
            )),
            "{command}: {stderr}"
        );
    }
}
