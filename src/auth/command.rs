//! `exec-allinone htpasswd`: create or update users in a password file, so operators need no
//! apache2-utils. Mirrors Apache's flags: -c create, -i password on stdin, -b (positional)
//! password on the command line, -m apr1-MD5, -C bcrypt cost.

use std::io::{BufRead, IsTerminal, Write};
use std::path::Path;

use anyhow::{Context, bail};

pub fn htpasswd(
    create: bool,
    stdin: bool,
    md5: bool,
    cost: u32,
    file: &Path,
    user: &str,
    password: Option<String>,
) -> anyhow::Result<()> {
    let password = match password {
        Some(p) => p,
        None if stdin || !std::io::stdin().is_terminal() => read_stdin_line()?,
        None => prompt_twice()?,
    };
    if password.is_empty() {
        bail!("refusing an empty password");
    }
    let hash = if md5 {
        super::htpasswd::hash_apr1(password.as_bytes())
    } else {
        super::htpasswd::hash_bcrypt(password.as_bytes(), cost)
    };
    let updated = super::htpasswd::set_user_hash(file, user, &hash, create)?;
    let verb = if updated { "Updating" } else { "Adding" };
    eprintln!("{verb} password for user {user}");
    Ok(())
}

fn read_stdin_line() -> anyhow::Result<String> {
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line).context("cannot read the password from stdin")?;
    Ok(line.trim_end_matches(['\n', '\r']).to_owned())
}

/// Prompts on the terminal with echo off, twice, like Apache's htpasswd.
fn prompt_twice() -> anyhow::Result<String> {
    let first = prompt("New password: ")?;
    let second = prompt("Re-type new password: ")?;
    if first != second {
        bail!("password verification error");
    }
    Ok(first)
}

fn prompt(text: &str) -> anyhow::Result<String> {
    use rustix::termios::{LocalModes, OptionalActions, tcgetattr, tcsetattr};
    let tty = std::io::stdin();
    eprint!("{text}");
    let _ = std::io::stderr().flush();
    let saved = tcgetattr(&tty).context("cannot read terminal settings")?;
    let mut silent = saved.clone();
    silent.local_modes.remove(LocalModes::ECHO);
    tcsetattr(&tty, OptionalActions::Now, &silent).context("cannot turn off echo")?;
    let line = read_stdin_line();
    let _ = tcsetattr(&tty, OptionalActions::Now, &saved);
    eprintln!();
    line
}
