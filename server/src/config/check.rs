//! Configuration errors an operator can act on: each names the key as the operator wrote it
//! (`limits.max_fram in quiver.toml`, `QUIVER_LIMITS__MAX_FRAME`), not figment's internal
//! `default.limits.max_fram`, suggests the key they probably meant, and warns about `QUIVER_*`
//! environment variables that configure nothing (figment skips them silently).

use std::path::Path;

use figment::error::Kind;

use super::{Config, TOP_LEVEL_KEYS};

/// The annotated default configuration that `quiver config init` prints. A unit test checks
/// that it parses to exactly [`Config::default`] and mentions every key.
pub const DEFAULT_TOML: &str = include_str!("default.toml");

/// `QUIVER_*` environment variables that are not configuration keys: read by the `quiver`
/// command itself (the first two) or by the project's scripts, tests and benchmarks, which a
/// developer may have exported. Anything else under the prefix that names no key gets a
/// warning. Only names something reads belong here: `QUIVER_API_KEY` was listed while nothing
/// read it, so an operator who guessed it for the backend API's key heard nothing, and every
/// API call got 401 (outside audit 105, F3).
pub const NON_CONFIG_ENV: &[&str] = &[
    "QUIVER_TOKEN",
    "QUIVER_LOG_FORMAT",
    "QUIVER_NATS_SERVER",
    "QUIVER_LONG_TESTS",
    "QUIVER_UPDATE_VECTORS",
    "QUIVER_BIN",
    "QUIVER_BENCH",
];

/// Shorthands for nested keys (see [`Config::load`]).
const ENV_SHORTHANDS: &[(&str, &str)] = &[
    ("QUIVER_JWT_SECRET", "auth.jwt_secret"),
    ("QUIVER_JWT_SECRET_FILE", "auth.jwt_secret_file"),
];

/// Names an operator may guess for the configuration file's path: nothing reads them, and a
/// server started with one ran on the defaults, in development mode, after one warning
/// (outside audit 116, F12).
const CONFIG_PATH_ENV: &[&str] = &["QUIVER_CONFIG", "QUIVER_CONFIG_FILE"];

/// `QUIVER_*` variables the configuration cannot be loaded with, whatever else it says, a line
/// each: a configuration file's path in a variable (`QUIVER_CONFIG`), and a shorthand beside
/// the variable it stands for (`QUIVER_JWT_SECRET` and `QUIVER_AUTH__JWT_SECRET`: the
/// shorthand won while `config check` and `token --check` named the other, outside audit 116,
/// F4). Names only, never values. Names compare as figment reads them: ignoring ASCII case.
pub(super) fn env_mistakes<'a>(vars: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let vars: Vec<&str> = vars.into_iter().map(str::trim).collect();
    let set = |name: &str| vars.iter().find(|v| v.eq_ignore_ascii_case(name)).copied();
    let mut problems = Vec::new();
    for name in CONFIG_PATH_ENV {
        if let Some(var) = set(name) {
            problems.push(format!(
                "{var} is set, but the configuration file is not read from the environment: \
                 the server would run without it, on the defaults; use --config FILE (quiver \
                 serve --config FILE, quiver config check FILE) and unset {var}"
            ));
        }
    }
    for (shorthand, key) in ENV_SHORTHANDS {
        let path: Vec<String> = key.split('.').map(str::to_owned).collect();
        if let (Some(short), Some(canonical)) = (set(shorthand), set(&env_var_for(&path))) {
            problems.push(format!(
                "{short} and {canonical} are both set and both give {key}: keep one"
            ));
        }
    }
    problems
}

/// [`env_mistakes`] of this process's environment, as one error.
pub(super) fn refuse_env_mistakes() -> Result<(), String> {
    let vars: Vec<String> = std::env::vars_os()
        .filter_map(|(k, _)| k.into_string().ok())
        .collect();
    super::validate::all_of(env_mistakes(vars.iter().map(String::as_str)))
}

/// Why a configuration cannot be used: one line per problem.
#[derive(Debug, thiserror::Error)]
#[error("{}", .problems.join("\n"))]
pub struct ConfigError {
    pub problems: Vec<String>,
}

/// A configuration that loaded, with what looked wrong but did not stop it.
#[derive(Debug)]
pub struct Checked {
    pub config: Config,
    pub warnings: Vec<String>,
}

impl Config {
    /// [`Config::load`] with operator-facing messages, and warnings about `QUIVER_*`
    /// environment variables that configure nothing.
    pub fn load_checked(file: Option<&Path>) -> Result<Checked, ConfigError> {
        let env: Vec<(String, String)> = std::env::vars().collect();
        match Config::load(file) {
            Ok(config) => Ok(Checked {
                config,
                warnings: unknown_env_keys(env.iter().map(|(k, _)| k.as_str())),
            }),
            Err(err) => Err(ConfigError {
                // A validation error holds every problem found, a line each.
                problems: (*err)
                    .into_iter()
                    .flat_map(|e| {
                        let described = describe(&e, &env, file);
                        described.lines().map(str::to_owned).collect::<Vec<_>>()
                    })
                    .collect(),
            }),
        }
    }
}

/// One figment error as the operator wrote the key. `loaded` is the file given to `load`, for
/// errors figment does not tie to a source (a TOML syntax error).
fn describe(e: &figment::Error, env: &[(String, String)], loaded: Option<&Path>) -> String {
    let from_env = e
        .metadata
        .as_ref()
        .is_some_and(|m| m.name.contains("environment variable"));
    let file = e
        .metadata
        .as_ref()
        .and_then(|m| m.source.as_ref())
        .and_then(|s| s.file_path())
        .map(|p| p.display().to_string());
    // The TOML parser quotes the offending line, secrets and all: say where and what only.
    if let Kind::Message(message) = &e.kind {
        if let Some(syntax) = toml_syntax_error(message) {
            return match file.or_else(|| loaded.map(|p| p.display().to_string())) {
                Some(file) => format!("{file}: {syntax}"),
                None => syntax,
            };
        }
    }
    // `namespaces.0.name` is written `namespaces[0].name`.
    let dotted = e.path.iter().fold(String::new(), |mut key, part| {
        if part.parse::<usize>().is_ok() {
            key.push_str(&format!("[{part}]"));
        } else {
            if !key.is_empty() {
                key.push('.');
            }
            key.push_str(part);
        }
        key
    });
    // Where the key was written: the environment variable's own name, or the key in its file.
    let place = if e.path.is_empty() {
        None
    } else if from_env {
        Some(env_name(&e.path, env))
    } else {
        match &file {
            Some(file) => Some(format!("{dotted} (in {file})")),
            None => Some(dotted.clone()),
        }
    };
    let what = match &e.kind {
        Kind::UnknownField(field, expected) => {
            let hint = match suggest(field, expected) {
                Some(s) if from_env => {
                    let mut path = e.path.clone();
                    if let Some(last) = path.last_mut() {
                        *last = s.to_owned();
                    }
                    format!("; did you mean {}?", env_var_for(&path))
                }
                Some(s) => format!("; did you mean `{s}`?"),
                None => format!("; known keys here: {}", expected.join(", ")),
            };
            format!("unknown key{hint}")
        }
        Kind::UnknownVariant(value, expected) => {
            format!(
                "unknown value {value:?}; expected one of {}",
                expected.join(", ")
            )
        }
        Kind::MissingField(field) => format!("`{field}` is required"),
        // Type and value errors quote the value: say what was expected without it, since the
        // value may be a secret.
        Kind::InvalidType(actual, expected) => {
            format!("expected {expected}, found {}", actual_kind(actual))
        }
        Kind::InvalidValue(_, expected) => format!("invalid value; expected {expected}"),
        other => other.to_string(),
    };
    match place {
        Some(place) => format!("{place}: {what}"),
        None => match file {
            Some(file) if !matches!(e.kind, Kind::Message(_)) => format!("{file}: {what}"),
            _ => what,
        },
    }
}

/// The kind of a value, never the value: a secret of the wrong type (`jwt_secret = 12345`,
/// a key written as a number) must not be echoed either.
fn actual_kind(actual: &figment::error::Actual) -> String {
    use figment::error::Actual;
    match actual {
        Actual::Bool(_) => "a boolean",
        Actual::Unsigned(_) | Actual::Signed(_) => "an integer",
        Actual::Float(_) => "a float",
        Actual::Char(_) => "a character",
        Actual::Str(_) => "a string",
        Actual::Bytes(_) => "bytes",
        Actual::Unit | Actual::UnitVariant => "nothing",
        Actual::Option => "an option",
        Actual::NewtypeStruct | Actual::NewtypeVariant => "a newtype",
        Actual::Seq => "an array",
        Actual::Map => "a table",
        Actual::Enum | Actual::TupleVariant | Actual::StructVariant => "an enum",
        Actual::Other(_) => "another type",
    }
    .to_owned()
}

/// A TOML parser's error (`TOML parse error at line 7, column 14`, the offending line quoted
/// with a caret under it, then what is wrong) as its position and what is wrong only: the
/// quoted line may hold a secret. `None` for any other message.
fn toml_syntax_error(message: &str) -> Option<String> {
    let mut lines = message.lines();
    let position = lines
        .next()?
        .trim()
        .strip_prefix("TOML parse error at ")?
        .to_owned();
    // The quote is `  |`, `7 | <the line>`, `  |    ^`: every line with a `|` gutter.
    let is_quote = |line: &str| {
        let trimmed = line.trim_start();
        let gutter = trimmed.trim_start_matches(|c: char| c.is_ascii_digit());
        gutter.starts_with('|') && (gutter.len() == 1 || gutter[1..].starts_with(' '))
    };
    // What is wrong follows the quote: nothing before its last line is kept.
    let rest: Vec<&str> = lines.collect();
    let after = rest.iter().rposition(|l| is_quote(l)).map_or(0, |i| i + 1);
    let what: Vec<&str> = rest[after..]
        .iter()
        .map(|l| l.trim())
        .filter(|l| !l.is_empty())
        .collect();
    Some(if what.is_empty() {
        format!("TOML syntax error at {position}")
    } else {
        format!("TOML syntax error at {position}: {}", what.join("; "))
    })
}

/// The environment variable that set `path`: the one actually set (in whatever case the
/// operator wrote it), else the canonical spelling.
fn env_name(path: &[String], env: &[(String, String)]) -> String {
    env_set(path, env).unwrap_or_else(|| env_var_for(path))
}

/// The environment variable, as the operator wrote it, that sets `path` (its own name or a
/// shorthand), if one is set.
fn env_set(path: &[String], env: &[(String, String)]) -> Option<String> {
    let set = |name: &str| {
        env.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(k, _)| k.clone())
    };
    let dotted = path.join(".");
    set(&env_var_for(path)).or_else(|| {
        ENV_SHORTHANDS
            .iter()
            .filter(|(_, key)| key.eq_ignore_ascii_case(&dotted))
            .find_map(|(var, _)| set(var))
    })
}

/// The variable of this process's environment that sets the key `dotted` (`auth.jwt_secret`),
/// as written, if one does: for tools that say where a setting came from.
pub fn env_variable_setting(dotted: &str) -> Option<String> {
    let env: Vec<(String, String)> = std::env::vars_os()
        .filter_map(|(k, _)| Some((k.into_string().ok()?, String::new())))
        .collect();
    let path: Vec<String> = dotted.split('.').map(str::to_owned).collect();
    env_set(&path, &env)
}

fn env_var_for(path: &[String]) -> String {
    format!("QUIVER_{}", path.join("__").to_ascii_uppercase())
}

/// The known key closest to a misspelt one, if any is close.
fn suggest<'a>(typo: &str, known: &[&'a str]) -> Option<&'a str> {
    known
        .iter()
        .map(|k| (strsim::jaro_winkler(&typo.to_ascii_lowercase(), k), *k))
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, k)| k)
}

/// The shorthand variable closest to `upper` (an upper-case `QUIVER_*` name), if any is close.
fn suggest_shorthand(upper: &str) -> Option<&'static str> {
    ENV_SHORTHANDS
        .iter()
        .map(|(name, _)| (strsim::jaro_winkler(upper, name), *name))
        .filter(|(score, _)| *score >= 0.93)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, name)| name)
}

/// Words in a variable's name that say it was meant to give the token key.
const KEY_WORDS: &[&str] = &["SECRET", "JWT", "JWKS", "KEY", "HS256", "AUTH"];

/// Why a configuration with no token key must not start: a `QUIVER_*` variable that configures
/// nothing but was plainly meant to give the key (`QUIVER_JWT_SECRT`). Without a key the
/// server runs in development mode, signing its own tokens; an operator who misspelt the
/// secret's name meant production, so `serve` and `config check` refuse rather than warn.
/// Call it only when the configuration, flags applied, has no key ([`Config::dev_mode`]).
pub fn key_meant_but_unset<'a>(vars: impl IntoIterator<Item = &'a str>) -> Option<String> {
    let meant: Vec<(&str, Unknown)> = vars
        .into_iter()
        .filter(|var| {
            let upper = var.to_ascii_uppercase();
            KEY_WORDS.iter().any(|word| upper.contains(word))
        })
        .filter_map(|var| Some((var, unknown_env_key(var)?)))
        .collect();
    if meant.is_empty() {
        return None;
    }
    let hint = meant
        .iter()
        .find_map(|(_, unknown)| unknown.meant.as_ref())
        .map(|fixed| format!(" (did you mean {fixed}?)"))
        .unwrap_or_default();
    let names: Vec<&str> = meant.iter().map(|(var, _)| *var).collect();
    Some(format!(
        "{} set but configures nothing{hint}, and no token key is configured: the server \
         would run in development mode, accepting tokens signed with its own development \
         secret. Name the key as a configuration key (QUIVER_JWT_SECRET, \
         QUIVER_JWT_SECRET_FILE, QUIVER_AUTH__*), or unset the variable to run in development \
         mode",
        names.join(", ")
    ))
}

/// Warnings for `QUIVER_*` variables that name no configuration key. Keys below a known
/// top-level key need no check here: `deny_unknown_fields` refuses them.
pub fn unknown_env_keys<'a>(vars: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    vars.into_iter()
        .filter_map(unknown_env_key)
        .map(|unknown| unknown.warning)
        .collect()
}

/// A `QUIVER_*` variable that names no configuration key.
struct Unknown {
    warning: String,
    /// The variable it was probably meant as.
    meant: Option<String>,
}

/// `var` as [`unknown_env_keys`] warns of it; `None` when it is not one to warn of.
fn unknown_env_key(var: &str) -> Option<Unknown> {
    let upper = var.to_ascii_uppercase();
    let rest = upper.strip_prefix("QUIVER_")?;
    if NON_CONFIG_ENV.contains(&upper.as_str())
        || ENV_SHORTHANDS.iter().any(|(name, _)| *name == upper)
    {
        return None;
    }
    let top = rest
        .split("__")
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    if TOP_LEVEL_KEYS.contains(&top.as_str()) {
        return None;
    }
    let ignored = format!("{var} is not a configuration key and is ignored");
    let guess = |hint: &str, fixed: String| Unknown {
        warning: format!("{ignored}; {hint}did you mean {fixed}?"),
        meant: Some(fixed),
    };
    // `QUIVER_API_KEY`: the natural guess for the backend API's key, which is a list of
    // tables (a key and its tenant each), not one value: `QUIVER_API__KEY` would be no better.
    if matches!(top.as_str(), "api_key" | "api_keys") {
        return Some(Unknown {
            warning: format!(
                "{ignored}; the backend API's keys are the list api.keys: [[api.keys]] tables \
                 with key = \"…\" (and tenant = \"…\" to limit one to a tenant) in the \
                 configuration file"
            ),
            meant: None,
        });
    }
    // `QUIVER_JWT_SECRT`: a shorthand misspelt.
    if let Some(fixed) = suggest_shorthand(&upper) {
        return Some(guess("", fixed.to_owned()));
    }
    // `QUIVER_LIMITS_MAX_FRAME`: one underscore where two separate the levels.
    if let Some(key) = TOP_LEVEL_KEYS
        .iter()
        .find(|key| top.starts_with(&format!("{key}_")))
    {
        let fixed = format!(
            "QUIVER_{}__{}",
            key.to_ascii_uppercase(),
            &rest[key.len() + 1..]
        );
        return Some(guess("nested keys are separated by `__`: ", fixed));
    }
    Some(match suggest(&top, TOP_LEVEL_KEYS) {
        Some(key) => {
            let fixed = match rest.split_once("__") {
                Some((_, tail)) => format!("QUIVER_{}__{tail}", key.to_ascii_uppercase()),
                None => format!("QUIVER_{}", key.to_ascii_uppercase()),
            };
            guess("", fixed)
        }
        None => Unknown {
            warning: format!(
                "{ignored}; top-level keys are {}",
                TOP_LEVEL_KEYS.join(", ")
            ),
            meant: None,
        },
    })
}

#[cfg(test)]
// figment's Jail API returns its own (large) error type.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;
    use figment::providers::{Format, Serialized, Toml};
    use figment::value::{Dict, Value};
    use figment::{Figment, Provider};

    #[test]
    fn the_annotated_default_is_the_default() {
        let parsed: Config = Figment::from(Toml::string(DEFAULT_TOML))
            .extract()
            .expect("the template parses");
        let as_json = |c: &Config| serde_json::to_value(c).expect("serializable");
        assert_eq!(as_json(&parsed), as_json(&Config::default()));
        // Every key the defaults have is written out in the template, not left implicit.
        // Unset optional keys are written as comments (`# cert = ...`).
        fn keys(prefix: &str, dict: &Dict, out: &mut Vec<String>) {
            for (k, v) in dict {
                let key = format!("{prefix}{k}");
                match v {
                    Value::Dict(_, inner) => keys(&format!("{key}."), inner, out),
                    Value::Empty(..) => {
                        assert!(
                            DEFAULT_TOML.contains(&format!("\n# {k} = "))
                                || DEFAULT_TOML.contains(&format!("\n# [{key}]\n")),
                            "{key} is not in default.toml, even as a comment"
                        );
                        continue;
                    }
                    _ => {}
                }
                out.push(key);
            }
        }
        let data = |f: Figment| {
            let mut out = Vec::new();
            for dict in f.data().expect("data").values() {
                keys("", dict, &mut out);
            }
            out
        };
        let written = data(Figment::from(Toml::string(DEFAULT_TOML)));
        for key in data(Figment::from(Serialized::defaults(Config::default()))) {
            assert!(written.contains(&key), "{key} is not in default.toml");
        }
    }

    #[test]
    fn errors_name_the_key_as_written() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("q.toml", "lisen = \"[::]:1\"\n")?;
            let err = Config::load_checked(Some("q.toml".as_ref())).unwrap_err();
            let msg = err.to_string();
            assert!(msg.starts_with("lisen (in "), "{msg}");
            assert!(msg.contains("did you mean `listen`"), "{msg}");
            assert!(!msg.contains("default."), "{msg}");

            jail.create_file("q.toml", "[limits]\nmax_fram = 3\n")?;
            let msg = Config::load_checked(Some("q.toml".as_ref()))
                .unwrap_err()
                .to_string();
            assert!(msg.starts_with("limits.max_fram (in "), "{msg}");
            assert!(msg.contains("`max_frame`"), "{msg}");

            jail.create_file(
                "q.toml",
                "[[namespaces]]\nname = \"a\"\n[[namespaces]]\nname = \"b\"\nhistroy_size = 1\n",
            )?;
            let msg = Config::load_checked(Some("q.toml".as_ref()))
                .unwrap_err()
                .to_string();
            assert!(msg.starts_with("namespaces[1].histroy_size (in "), "{msg}");
            assert!(msg.contains("`history_size`"), "{msg}");

            jail.create_file("q.toml", "")?;
            jail.set_env("QUIVER_LIMITS__MAX_FRAME", "abc");
            let msg = Config::load_checked(Some("q.toml".as_ref()))
                .unwrap_err()
                .to_string();
            assert!(
                msg.starts_with("QUIVER_LIMITS__MAX_FRAME: expected u32"),
                "{msg}"
            );
            assert!(!msg.contains("abc"), "values are not quoted: {msg}");
            jail.set_env("QUIVER_LIMITS__MAX_FRAME", "131072");
            jail.set_env("QUIVER_LIMITS__MAX_FRAM", "1");
            let msg = Config::load_checked(None).unwrap_err().to_string();
            assert!(
                msg.contains(
                    "QUIVER_LIMITS__MAX_FRAM: unknown key; did you mean QUIVER_LIMITS__MAX_FRAME?"
                ),
                "{msg}"
            );
            Ok(())
        });
    }

    #[test]
    fn unknown_quiver_variables_are_warned_about() {
        let warnings = unknown_env_keys([
            "QUIVER_LIMTS__MAX_FRAME",
            "QUIVER_LIMITS_MAX_FRAME",
            "QUIVER_LIMITS__MAX_FRAME",
            "QUIVER_JWT_SECRET",
            "QUIVER_TOKEN",
            "QUIVER_ZZZZZZ",
            "PATH",
        ]);
        assert_eq!(warnings.len(), 3, "{warnings:#?}");
        assert!(warnings[0].contains("did you mean QUIVER_LIMITS__MAX_FRAME?"));
        assert!(warnings[1].contains("separated by `__`: did you mean QUIVER_LIMITS__MAX_FRAME?"));
        assert!(warnings[2].starts_with("QUIVER_ZZZZZZ is not a configuration key"));
    }

    /// Outside audit 105, F3: nothing reads `QUIVER_API_KEY`, so it is warned about like any
    /// variable that configures nothing (it was exempt, and an operator who guessed it for the
    /// API key heard nothing), pointing at `api.keys`; and like any other variable named for a
    /// key, it stops a server that would run in development mode.
    #[test]
    fn quiver_api_key_configures_nothing_and_says_so() {
        for name in ["QUIVER_API_KEY", "quiver_api_keys"] {
            let warnings = unknown_env_keys([name]);
            assert_eq!(warnings.len(), 1, "{name}: {warnings:?}");
            assert!(
                warnings[0].starts_with(&format!("{name} is not a configuration key")),
                "{warnings:?}"
            );
            assert!(warnings[0].contains("[[api.keys]]"), "{warnings:?}");
            assert!(!warnings[0].contains("did you mean"), "{warnings:?}");
            assert!(key_meant_but_unset([name]).is_some(), "{name}");
        }
    }

    /// Audit 39: a misspelt secret variable is named with the shorthand it was meant as, and
    /// stops a server that would otherwise run in development mode.
    #[test]
    fn a_misspelt_key_variable_is_named_and_refused() {
        for (typo, meant) in [
            ("QUIVER_JWT_SECRT", "QUIVER_JWT_SECRET"),
            ("QUIVER_JWT_SECRET_FIEL", "QUIVER_JWT_SECRET_FILE"),
            ("quiver_jwt_secret_fil", "QUIVER_JWT_SECRET_FILE"),
        ] {
            let warnings = unknown_env_keys([typo]);
            assert_eq!(
                warnings,
                [format!(
                    "{typo} is not a configuration key and is ignored; did you mean {meant}?"
                )]
            );
            let refused = key_meant_but_unset([typo, "PATH"]).expect(typo);
            assert!(
                refused.starts_with(&format!(
                    "{typo} set but configures nothing (did you mean {meant}?)"
                )),
                "{refused}"
            );
        }
        // One underscore where two separate the levels: the nested key is the guess.
        let refused = key_meant_but_unset(["QUIVER_AUTH_JWT_SECRET"]).expect("refused");
        assert!(refused.starts_with("QUIVER_AUTH_JWT_SECRET set but configures nothing (did you mean QUIVER_AUTH__JWT_SECRET?)"), "{refused}");
        // Other names for a key (outside audit 42, 6).
        for named in ["QUIVER_SIGNING_KEY", "QUIVER_HS256", "QUIVER_TOKEN_KEY"] {
            assert!(key_meant_but_unset([named]).is_some(), "{named}");
        }
        // Named for a key but close to no shorthand: refused, without a guess.
        let refused = key_meant_but_unset(["QUIVER_MY_JWKS"]).expect("refused");
        assert!(
            refused.starts_with("QUIVER_MY_JWKS set but configures nothing, and no token key"),
            "{refused}"
        );
        // Known keys, variables of the command and unrelated typos stop nothing.
        assert_eq!(
            key_meant_but_unset([
                "QUIVER_JWT_SECRET",
                "QUIVER_JWT_SECRET_FILE",
                "QUIVER_AUTH__JWKS_URL",
                "QUIVER_TOKEN",
                "QUIVER_LIMTS__MAX_FRAME",
                "JWT_SECRET",
            ]),
            None
        );
    }
}
