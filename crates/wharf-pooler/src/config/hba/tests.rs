use super::*;

fn parse(text: &str) -> Result<HbaRules, ConfigError> {
    HbaRules::parse(text, Path::new("/nonexistent/hba.conf"))
}

fn one_rule(text: &str) -> HbaRule {
    let rules = parse(text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
    assert_eq!(rules.rules().len(), 1, "{text:?}");
    rules.rules()[0].clone()
}

fn net(addr: &str, mask: &str) -> HbaAddress {
    HbaAddress::Net {
        addr: addr.parse().unwrap(),
        mask: mask.parse().unwrap(),
    }
}

fn name(n: &str) -> HbaDatabase {
    HbaDatabase::Name(n.to_owned())
}

fn user(n: &str) -> HbaUser {
    HbaUser::Name(n.to_owned())
}

#[test]
fn good_records_parse_into_rules() {
    use HbaConnection::*;
    use HbaMethod::*;
    let rule = |connection, databases, users, address, method| HbaRule {
        line: 1,
        connection,
        databases,
        users,
        address,
        method,
    };
    let cases = [
        (
            "local all all peer",
            rule(
                Local,
                vec![HbaDatabase::All],
                vec![HbaUser::All],
                HbaAddress::Any,
                Peer,
            ),
        ),
        (
            "host app alice 10.0.0.0/8 md5",
            rule(
                Host,
                vec![name("app")],
                vec![user("alice")],
                net("10.0.0.0", "255.0.0.0"),
                Md5,
            ),
        ),
        (
            "hostssl all all ::1/128 cert",
            rule(
                HostSsl,
                vec![HbaDatabase::All],
                vec![HbaUser::All],
                net("::1", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"),
                Cert,
            ),
        ),
        (
            "hostnossl sameuser all all scram-sha-256",
            rule(
                HostNoSsl,
                vec![HbaDatabase::SameUser],
                vec![HbaUser::All],
                HbaAddress::Any,
                ScramSha256,
            ),
        ),
        (
            "host a,b,\"all\" x,\"all\" 192.168.1.0 255.255.255.0 password",
            rule(
                Host,
                vec![name("a"), name("b"), name("all")],
                vec![user("x"), user("all")],
                net("192.168.1.0", "255.255.255.0"),
                Password,
            ),
        ),
        (
            "host replication all 0.0.0.0/0 plain",
            rule(
                Host,
                vec![HbaDatabase::Replication],
                vec![HbaUser::All],
                net("0.0.0.0", "0.0.0.0"),
                Password,
            ),
        ),
        (
            "host all all 10.1.2.3/32 reject # no",
            rule(
                Host,
                vec![HbaDatabase::All],
                vec![HbaUser::All],
                net("10.1.2.3", "255.255.255.255"),
                Reject,
            ),
        ),
        (
            "local \"my db\" \"sameuser\" trust",
            rule(
                Local,
                vec![name("my db")],
                vec![user("sameuser")],
                HbaAddress::Any,
                Trust,
            ),
        ),
    ];
    for (text, expected) in cases {
        assert_eq!(one_rule(text), expected, "{text}");
    }
}

#[test]
fn bad_records_name_the_line_and_what_is_wrong() {
    let cases: &[(&str, &str)] = &[
        ("hostgssenc all all all md5", "connection type \"hostgssenc\" is not supported"),
        ("hostnogssenc all all all md5", "connection type \"hostnogssenc\" is not supported"),
        ("remote all all md5", "unknown connection type \"remote\""),
        ("include other.conf", "\"include\" is not supported"),
        ("local all", "missing the user column"),
        ("local all all", "missing the method column"),
        ("host all all", "missing the address column"),
        ("host all all 10.0.0.0/8", "missing the method column"),
        ("local all all magic", "unknown authentication method \"magic\""),
        ("local all all ldap", "method \"ldap\" is not supported by wharf"),
        ("local all all pam", "method \"pam\" only works as auth_type"),
        ("local all all any", "method \"any\" only works as auth_type"),
        ("local samerole all trust", "\"samerole\" is not supported"),
        ("local samegroup all trust", "\"samegroup\" is not supported"),
        ("local all +admins trust", "group membership (\"+admins\") is not supported"),
        ("local /^app all trust", "regular expressions (\"/^app\") are not supported"),
        ("host all all samehost md5", "\"samehost\" is not supported"),
        ("host all all samenet md5", "\"samenet\" is not supported"),
        ("host all all db.example.com md5", "\"db.example.com\" is not an IP address: host names"),
        ("host all all .example.com md5", "\".example.com\" is not an IP address"),
        ("host all all 10.0.0.0/33 md5", "invalid CIDR mask in \"10.0.0.0/33\": expected a length from 0 to 32"),
        ("host all all ::/129 md5", "expected a length from 0 to 128"),
        ("host all all 10.0.0.x/8 md5", "\"10.0.0.x\" is not an IP address"),
        ("host all all 10.0.0.1 md5", "address \"10.0.0.1\" needs a CIDR length (\"10.0.0.1/32\") or a mask of the same family in the next column, not \"md5\""),
        ("host all all 10.0.0.1 ffff:: md5", "a mask of the same family"),
        ("host all all 10.0.0.0/8,10.1.0.0/16 md5", "the address column takes one word, not a list"),
        ("local all all md5,trust", "the method column takes one word, not a list"),
        ("host all all 10.0.0.0/8 peer", "peer authentication is only for local"),
        ("local all all cert", "cert authentication needs TLS"),
        ("hostnossl all all all cert", "cert authentication needs TLS"),
        ("local all all peer map=omicron", "option map= (user name maps from auth_ident_file) is not supported"),
        ("hostssl all all all md5 clientcert=verify-full", "option clientcert= is not supported"),
        ("local all all trust foo=bar", "unknown option \"foo\""),
        ("local all all trust extra", "unexpected \"extra\" after the method"),
        ("local a,,b all trust", "empty item in a comma list"),
        ("local \"a all trust", "unterminated double quote"),
    ];
    for (text, expected) in cases {
        let input = format!("# header\n\nlocal all all trust\n{text}\n");
        let err = parse(&input).expect_err(text).to_string();
        assert!(
            err.starts_with("/nonexistent/hba.conf:4: ") && err.contains(expected),
            "{text:?}: {err}"
        );
    }
}

#[test]
fn at_files_are_read_relative_to_the_file_that_names_them() {
    let dir = std::env::temp_dir().join(format!("wharf-hba-unit-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    std::fs::write(
        dir.join("dbs"),
        "app, report # comment\n\"all\" @sub/more\n",
    )
    .unwrap();
    std::fs::write(dir.join("sub/more"), "extra\n").unwrap();
    std::fs::write(dir.join("loop"), "@loop\n").unwrap();
    std::fs::write(dir.join("bad"), "ok \"open\n").unwrap();
    let hba = dir.join("hba.conf");
    let rules = HbaRules::parse("local @dbs,solo all trust\n", &hba).unwrap();
    assert_eq!(
        rules.rules()[0].databases,
        vec![
            name("app"),
            name("report"),
            name("all"),
            name("extra"),
            name("solo")
        ]
    );
    let quoted = HbaRules::parse("local \"@dbs\" all trust\n", &hba).unwrap();
    assert_eq!(quoted.rules()[0].databases, vec![name("@dbs")]);
    let missing = HbaRules::parse("\nlocal all @nope trust\n", &hba).unwrap_err();
    assert!(
        missing.to_string().starts_with(&format!(
            "{}:2: could not read \"{}\"",
            hba.display(),
            dir.join("nope").display()
        )),
        "{missing}"
    );
    let nested = HbaRules::parse("local @loop all trust\n", &hba).unwrap_err();
    assert!(
        nested.to_string().contains("nested more than 10 deep"),
        "{nested}"
    );
    let inner = HbaRules::parse("local @bad all trust\n", &hba).unwrap_err();
    assert!(
        inner.to_string().starts_with(&format!(
            "{}:1: unterminated double quote",
            dir.join("bad").display()
        )),
        "{inner}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn rules_print_as_records_and_report_their_databases() {
    let rules = parse(
        "local all all peer\nhost app,\"my db\" all 10.0.0.0 255.0.0.0 md5\n\
         host sameuser bob 10.0.0.0 255.0.255.0 trust\nhostssl \"all\" \"all\" ::/0 cert\n\
         host replication all all reject\n",
    )
    .unwrap();
    let printed: Vec<String> = rules.rules().iter().map(ToString::to_string).collect();
    assert_eq!(
        printed,
        [
            "local all all peer",
            "host app,\"my db\" all 10.0.0.0/8 md5",
            "host sameuser bob 10.0.0.0 255.0.255.0 trust",
            "hostssl \"all\" \"all\" ::/0 cert",
            "host replication all all reject",
        ]
    );
    let lines: Vec<usize> = rules.rules().iter().map(|r| r.line).collect();
    assert_eq!(lines, [1, 2, 3, 4, 5]);
    let for_app: Vec<usize> = rules
        .rules()
        .iter()
        .filter(|r| r.may_apply_to_database("app"))
        .map(|r| r.line)
        .collect();
    assert_eq!(for_app, [1, 2, 3]);
    let for_all: Vec<usize> = rules
        .rules()
        .iter()
        .filter(|r| r.may_apply_to_database("all"))
        .map(|r| r.line)
        .collect();
    assert_eq!(for_all, [1, 3, 4]);
}
