//! The runner container's command line, as the operator builds it (reference §2.5, §2.9):
//! `bash -c "<shard id> && [download &&] [log config &&] exec <runtime> <args>"`.
//!
//! Parts are joined with single spaces exactly like the operator joins its argument lists,
//! including the double spaces empty optional parts leave, so a workload can move between
//! the operator and meshops without a restart.

use super::details;
use super::spec::{ComponentKind, RunnerSpec};
use crate::model::{
    AuthConfig, Log4jConfigFileType, LogFormat, LogLevel, PulsarMessaging, RotatePolicy,
    RuntimeLogConfig,
};

pub const OAUTH2_PLUGIN: &str = "org.apache.pulsar.client.impl.auth.oauth2.AuthenticationOAuth2";
pub const OAUTH2_MOUNT: &str = "/etc/oauth2";
/// The runtime's flag for the auth plugin's parameters (often a token).
pub const CLIENT_AUTH_PARAMS: &str = "--client_auth_params";
/// pulsar-admin's and pulsarctl's flag for the same.
pub const AUTH_PARAMS: &str = "--auth-params";
/// Every flag whose next shell word is a credential: `render::sensitive` masks that word in
/// every display, so auth parameters must only ever be written after one of these.
pub const AUTH_PARAMS_FLAGS: &[&str] = &[CLIENT_AUTH_PARAMS, AUTH_PARAMS];
pub const TLS_MOUNT: &str = "/etc/tls/pulsar-functions";
pub const JAVA_LOG_DIR: &str = "/pulsar/conf/java-log/";
pub const PYTHON_LOG_DIR: &str = "/pulsar/conf/python-log/";
const PYTHON_LOG_FILE: &str = "/pulsar/conf/python-log/python_instance_logging.ini";
const SHARD_ID: &str = "SHARD_ID=${POD_NAME##*-} && echo shardId=${SHARD_ID}";

/// `'…'` with every `'` written as `'"'"'` (the operator's `shellQuoteLiteral`).
pub fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r#"'"'"'"#))
}

/// Which tools the runner image has for downloading packages.
#[derive(Clone, Copy, Debug)]
pub struct Tools {
    pub pulsarctl: bool,
    pub wget: bool,
}

impl Tools {
    pub fn of(r: &RunnerSpec, image: &str) -> Tools {
        // The operator's regex `pulsar-functions-(pulsarctl|sn|generic)-(java|python|go|nodejs|base)-runner`,
        // as plain substring checks (a regex compiled per component dominated render time).
        let known = ["pulsarctl", "sn", "generic"].iter().any(|flavour| {
            ["java", "python", "go", "nodejs", "base"]
                .iter()
                .any(|lang| image.contains(&format!("pulsar-functions-{flavour}-{lang}-runner")))
        });
        Tools {
            pulsarctl: known || r.spec.image_has_pulsarctl == Some(true),
            wget: known || r.spec.image_has_get == Some(true),
        }
    }
}

/// The connection a download uses: the package service when set (its env vars prefixed
/// `PACKAGE_`), otherwise the function's own.
pub struct Connection<'a> {
    pub messaging: &'a PulsarMessaging,
    pub prefix: &'static str,
}

impl Connection<'_> {
    fn var(&self, name: &str) -> String {
        format!("${}{name}", self.prefix)
    }

    fn tls(&self) -> Option<&crate::model::PulsarTlsConfig> {
        self.messaging.tls_config.as_ref()
    }
}

fn tls_enabled(c: &Connection<'_>) -> bool {
    c.tls().and_then(|t| t.enabled).unwrap_or(false)
}

fn has_tls_volume(tls: &crate::model::PulsarTlsConfig) -> bool {
    tls.cert_secret_name
        .as_deref()
        .is_some_and(|s| !s.is_empty())
        && tls
            .cert_secret_key
            .as_deref()
            .is_some_and(|s| !s.is_empty())
}

fn tls_cert_path(tls: &crate::model::PulsarTlsConfig, mount: &str) -> String {
    format!(
        "{mount}/{}",
        tls.cert_secret_key.as_deref().unwrap_or_default()
    )
}

/// The `--client_auth_params` JSON for OAuth2 (already single-quoted, as the operator does).
pub fn oauth2_params(auth: &crate::model::OAuth2Config, mount: &str) -> String {
    let file = format!("{mount}/{}", auth.key_secret_key);
    let scope = auth.scope.as_deref().unwrap_or_default();
    format!(
        r#"'{{"credentials_url":"file://{file}","privateKey":"{file}","private_key":"{file}","issuerUrl":"{issuer}","issuer_url":"{issuer}","audience":"{audience}","scope":"{scope}"}}'"#,
        issuer = auth.issuer_url,
        audience = auth.audience,
    )
}

fn oauth2(auth: &Option<AuthConfig>) -> Option<&crate::model::OAuth2Config> {
    auth.as_ref().and_then(|a| a.oauth2_config.as_ref())
}

fn generic(auth: &Option<AuthConfig>) -> Option<&crate::model::GenericAuth> {
    auth.as_ref().and_then(|a| a.generic_auth.as_ref())
}

/// The client auth plugin and its parameters: OAuth2, generic, or the legacy Secret's env.
fn auth_plugin(m: &PulsarMessaging, oauth2_mount: &str, prefix: &str) -> Option<(String, String)> {
    if let Some(o) = oauth2(&m.auth_config) {
        Some((OAUTH2_PLUGIN.into(), oauth2_params(o, oauth2_mount)))
    } else if let Some(g) = generic(&m.auth_config) {
        Some((
            g.client_authentication_plugin.clone(),
            shell_quote(&g.client_authentication_parameters),
        ))
    } else if m.auth_secret.is_some() {
        Some((
            format!("${prefix}clientAuthenticationPlugin"),
            format!("${prefix}clientAuthenticationParameters"),
        ))
    } else {
        None
    }
}

fn pulsar_admin(c: &Connection<'_>, oauth2_mount: &str, tls_mount: &str) -> Vec<String> {
    let m = c.messaging;
    let mut args = vec![
        "/pulsar/bin/pulsar-admin".into(),
        "--admin-url".into(),
        c.var("webServiceURL"),
    ];
    if let Some((plugin, params)) = auth_plugin(m, oauth2_mount, c.prefix) {
        args.extend(["--auth-plugin".into(), plugin, AUTH_PARAMS.into(), params]);
    }
    match c.tls() {
        None if m.tls_secret.is_some() => args.extend([
            "--tls-allow-insecure".into(),
            "--tls-enable-hostname-verification".into(),
            "--tls-trust-cert-path".into(),
            c.var("tlsTrustCertsFilePath"),
        ]),
        Some(tls) if tls_enabled(c) => {
            if tls.allow_insecure == Some(true) {
                args.push("--tls-allow-insecure".into());
            }
            if tls.hostname_verification == Some(true) {
                args.push("--tls-enable-hostname-verification".into());
            }
            if has_tls_volume(tls) {
                args.extend([
                    "--tls-trust-cert-path".into(),
                    tls_cert_path(tls, tls_mount),
                ]);
            }
        }
        _ => {}
    }
    args
}

fn pulsarctl(c: &Connection<'_>, oauth2_mount: &str, tls_mount: &str) -> Vec<String> {
    let m = c.messaging;
    let path = "export PATH=$PATH:/pulsar/bin && ".to_owned();
    let mut args: Vec<String> = if let Some(o) = oauth2(&m.auth_config) {
        let mut a = vec![
            path,
            "pulsarctl".into(),
            "context".into(),
            "set".into(),
            "downloader".into(),
            "--admin-service-url".into(),
            c.var("webServiceURL"),
            "--issuer-endpoint".into(),
            o.issuer_url.clone(),
            "--audience".into(),
            o.audience.clone(),
            "--key-file".into(),
            format!("{oauth2_mount}/{}", o.key_secret_key),
        ];
        if let Some(scope) = o.scope.as_deref().filter(|s| !s.is_empty()) {
            a.extend(["--scope".into(), scope.to_owned()]);
        }
        a.extend([
            "&& pulsarctl".into(),
            "oauth2".into(),
            "activate".into(),
            "&& pulsarctl".into(),
        ]);
        a
    } else if let Some(g) = generic(&m.auth_config) {
        let params = shell_quote(&g.client_authentication_parameters);
        vec![
            path,
            "( pulsarctl".into(),
            "oauth2".into(),
            "activate".into(),
            AUTH_PARAMS.into(),
            params.clone(),
            "|| true ) &&".into(),
            "pulsarctl".into(),
            "--auth-plugin".into(),
            g.client_authentication_plugin.clone(),
            AUTH_PARAMS.into(),
            params,
            "--admin-service-url".into(),
            c.var("webServiceURL"),
        ]
    } else if m.auth_secret.is_some() {
        vec![
            path,
            "( pulsarctl".into(),
            "oauth2".into(),
            "activate".into(),
            AUTH_PARAMS.into(),
            format!("{} || true", c.var("clientAuthenticationParameters")),
            ") &&".into(),
            "pulsarctl".into(),
            "--auth-plugin".into(),
            c.var("clientAuthenticationPlugin"),
            AUTH_PARAMS.into(),
            c.var("clientAuthenticationParameters"),
            "--admin-service-url".into(),
            c.var("webServiceURL"),
        ]
    } else {
        vec![
            path,
            "pulsarctl".into(),
            "--admin-service-url".into(),
            c.var("webServiceURL"),
        ]
    };
    match c.tls() {
        None if m.tls_secret.is_some() => args.extend([
            format!(
                "--tls-allow-insecure=${{{}tlsAllowInsecureConnection:-false}}",
                c.prefix
            ),
            format!(
                "--tls-enable-hostname-verification=${{{}tlsHostnameVerificationEnable:-true}}",
                c.prefix
            ),
            "--tls-trust-cert-path".into(),
            c.var("tlsTrustCertsFilePath"),
        ]),
        Some(tls) if tls_enabled(c) => {
            args.push(format!(
                "--tls-allow-insecure={}",
                tls.allow_insecure.unwrap_or(false)
            ));
            args.push(format!(
                "--tls-enable-hostname-verification={}",
                tls.hostname_verification.unwrap_or(false)
            ));
            if has_tls_volume(tls) {
                args.extend([
                    "--tls-trust-cert-path".into(),
                    tls_cert_path(tls, tls_mount),
                ]);
            }
        }
        _ => {}
    }
    args
}

fn has_package_prefix(location: &str) -> bool {
    ["function://", "sink://", "source://"]
        .iter()
        .any(|p| location.starts_with(p))
}

pub fn has_http_prefix(location: &str) -> bool {
    location.starts_with("http://") || location.starts_with("https://")
}

/// The operator's `getDownloadCommand` argv (the `TestGetDownloadCommand` table).
pub fn download_args(
    location: &str,
    target: &str,
    tools: Tools,
    c: &Connection<'_>,
) -> Vec<String> {
    let (oauth2_mount, tls_mount) = if c.prefix.is_empty() {
        (OAUTH2_MOUNT, TLS_MOUNT)
    } else {
        (
            "/etc/oauth2-package-service",
            "/etc/tls/pulsar-functions-package-service",
        )
    };
    if has_http_prefix(location) && tools.wget {
        return vec!["wget".into(), location.into(), "-O".into(), target.into()];
    }
    let mut args = if tools.pulsarctl {
        pulsarctl(c, oauth2_mount, tls_mount)
    } else {
        pulsar_admin(c, oauth2_mount, tls_mount)
    };
    if has_package_prefix(location) {
        args.extend([
            "packages".into(),
            "download".into(),
            location.into(),
            "--path".into(),
            target.into(),
        ]);
    } else {
        args.extend([
            "functions".into(),
            "download".into(),
            "--path".into(),
            location.into(),
            "--destination-file".into(),
            target.into(),
        ]);
    }
    args
}

/// `--instance_id … --cluster_name …` plus auth and TLS (Java, Python, generic).
pub fn shared_args(r: &RunnerSpec, details: &str, function_id: &str) -> Vec<String> {
    let s = &r.spec;
    let mut args: Vec<String> = vec![
        "--instance_id".into(),
        "${SHARD_ID}".into(),
        "--function_id".into(),
        function_id.into(),
        "--function_version".into(),
        "0".into(),
        "--function_details".into(),
        shell_quote(details),
        "--pulsar_serviceurl".into(),
        "$brokerServiceURL".into(),
        "--max_buffered_tuples".into(),
        "100".into(),
        "--port".into(),
        "9093".into(),
        "--metrics_port".into(),
        "9094".into(),
        "--expected_healthcheck_interval".into(),
        "0".into(),
        "--cluster_name".into(),
        s.cluster_name.clone().unwrap_or_default(),
    ];
    let default_messaging = PulsarMessaging::default();
    let m = s.pulsar.as_ref().unwrap_or(&default_messaging);
    if let Some((plugin, params)) = auth_plugin(m, OAUTH2_MOUNT, "") {
        args.extend([
            "--client_auth_plugin".into(),
            plugin,
            CLIENT_AUTH_PARAMS.into(),
            params,
        ]);
    }
    match &m.tls_config {
        None if m.tls_secret.is_some() => args.extend([
            "--use_tls".into(),
            "true".into(),
            "--tls_allow_insecure".into(),
            "${tlsAllowInsecureConnection:-false}".into(),
            "--hostname_verification_enabled".into(),
            "${tlsHostnameVerificationEnable:-true}".into(),
            "--tls_trust_cert_path".into(),
            "$tlsTrustCertsFilePath".into(),
        ]),
        None => args.extend(["--use_tls".into(), "false".into()]),
        Some(tls) => {
            let enabled = tls.enabled.unwrap_or(false);
            args.extend(["--use_tls".into(), enabled.to_string()]);
            if enabled {
                args.extend([
                    "--tls_allow_insecure".into(),
                    tls.allow_insecure.unwrap_or(false).to_string(),
                    "--hostname_verification_enabled".into(),
                    tls.hostname_verification.unwrap_or(false).to_string(),
                ]);
                if has_tls_volume(tls) {
                    args.extend([
                        "--tls_trust_cert_path".into(),
                        tls_cert_path(tls, TLS_MOUNT),
                    ]);
                }
            }
        }
    }
    args
}

fn java_level(log: Option<&RuntimeLogConfig>) -> Option<&'static str> {
    let log = log.filter(|l| l.log_config.is_none())?;
    Some(match log.level? {
        LogLevel::All => "ALL",
        LogLevel::Debug => "DEBUG",
        LogLevel::Trace => "TRACE",
        LogLevel::Warn => "WARN",
        LogLevel::Error => "ERROR",
        LogLevel::Fatal => "FATAL",
        LogLevel::Off => "OFF",
        LogLevel::Info | LogLevel::Panic => "INFO",
    })
}

fn python_level(log: Option<&RuntimeLogConfig>) -> Option<&'static str> {
    let log = log.filter(|l| l.log_config.is_none())?;
    Some(match log.level? {
        LogLevel::Debug => "DEBUG",
        LogLevel::Warn => "WARNING",
        LogLevel::Error => "ERROR",
        LogLevel::Fatal => "CRITICAL",
        _ => "INFO",
    })
}

/// The Go runtime's `LOGGING_LEVEL`.
pub fn go_level(log: Option<&RuntimeLogConfig>) -> &'static str {
    match log.filter(|l| l.log_config.is_none()).and_then(|l| l.level) {
        Some(LogLevel::Debug) => "debug",
        Some(LogLevel::Trace) => "trace",
        Some(LogLevel::Warn) => "warn",
        Some(LogLevel::Error) => "error",
        Some(LogLevel::Fatal) => "fatal",
        Some(LogLevel::Panic) => "panic",
        _ => "info",
    }
}

fn xml_policy(policy: RotatePolicy) -> String {
    let cron = |schedule: &str| {
        format!("<CronTriggeringPolicy>\n                    <schedule>\"{schedule}\"</schedule>\n                </CronTriggeringPolicy>")
    };
    let size = |size: &str| {
        format!("<SizeBasedTriggeringPolicy>\n                    <size>{size}</size>\n                </SizeBasedTriggeringPolicy>")
    };
    match policy {
        RotatePolicy::TimedPolicyWithDaily => cron(r"0 0 0 \* \* \? \*"),
        RotatePolicy::TimedPolicyWithWeekly => cron(r"0 0 0 \? \* 1 *"),
        RotatePolicy::TimedPolicyWithMonthly => cron(r"0 0 0 1 \* \? \*"),
        RotatePolicy::SizedPolicyWith10Mb => size("10MB"),
        RotatePolicy::SizedPolicyWith50Mb => size("50MB"),
        RotatePolicy::SizedPolicyWith100Mb => size("100MB"),
    }
}

/// The rotation policy: the configured one, or 10 MB when the sidecar ships the log file.
fn rotation(log: Option<&RuntimeLogConfig>, sidecar: bool) -> Option<RotatePolicy> {
    log.and_then(|l| l.rotate_policy)
        .or(sidecar.then_some(RotatePolicy::SizedPolicyWith10Mb))
}

fn is_json(log: Option<&RuntimeLogConfig>) -> bool {
    log.and_then(|l| l.format) == Some(LogFormat::Json)
}

/// The log4j2 XML configuration the operator writes for Java runners.
pub fn log4j_xml(log: Option<&RuntimeLogConfig>, sidecar: bool) -> String {
    let level = java_level(log).unwrap_or("INFO");
    let layout = if is_json(log) {
        "\n            <JSONLayout>\n                <complete>true</complete>\n                <compact>true</compact>\n                <eventEol>true</eventEol>\n            </JSONLayout>\n            "
    } else {
        "\n            <PatternLayout>\n                <Pattern>%d{ISO8601_OFFSET_DATE_TIME_HHMM} [%t] %-5level %logger{36} - %msg%n</Pattern>\n            </PatternLayout>\n            "
    };
    let policy = rotation(log, sidecar);
    let rolling_appender = policy.map(|p| format!(
        "\n        <RollingRandomAccessFile>\n            <name>RollingRandomAccessFile</name>\n            <fileName>\\${{sys:pulsar.function.log.dir}}/\\${{sys:pulsar.function.log.file}}.log</fileName>\n            <filePattern>\\${{sys:pulsar.function.log.dir}}/\\${{sys:pulsar.function.log.file}}.%d{{yyyy-MM-dd-hh-mm}}-%i.log.gz</filePattern>\n            <PatternLayout>\n                <Pattern>%d{{yyyy-MMM-dd HH:mm:ss a}} [%t] %-5level %logger{{36}} - %msg%n</Pattern>\n            </PatternLayout>\n            <Policies>\n                {}\n            </Policies>\n            <DefaultRolloverStrategy>\n                <max>5</max>\n            </DefaultRolloverStrategy>\n        </RollingRandomAccessFile>",
        xml_policy(p)
    )).unwrap_or_default();
    let rolling_ref = |indent: &str| {
        if policy.is_some() {
            format!("\n{indent}<AppenderRef>\n{indent}    <ref>RollingRandomAccessFile</ref>\n{indent}</AppenderRef>")
        } else {
            String::new()
        }
    };
    format!(
        "<Configuration>\n    <name>pulsar-functions-kubernetes-instance</name>\n    <monitorInterval>30</monitorInterval>\n    <Properties>\n        <Property>\n            <name>pulsar.log.level</name>\n            <value>{level}</value>\n        </Property>\n        <Property>\n            <name>bk.log.level</name>\n            <value>{level}</value>\n        </Property>\n    </Properties>\n    <Appenders>\n        <Console>\n            <name>Console</name>\n            <target>SYSTEM_OUT</target>\n            {layout}\n        </Console>{rolling_appender}\n    </Appenders>\n    <Loggers>\n        <Logger>\n            <name>org.apache.pulsar.functions.runtime.shaded.org.apache.bookkeeper</name>\n            <level>\\${{sys:bk.log.level}}</level>\n            <additivity>false</additivity>\n            <AppenderRef>\n                <ref>Console</ref>\n            </AppenderRef>{logger_ref}\n        </Logger>\n        <Root>\n            <level>\\${{sys:pulsar.log.level}}</level>\n            <AppenderRef>\n                <ref>Console</ref>\n                <level>\\${{sys:pulsar.log.level}}</level>\n            </AppenderRef>{root_ref}\n        </Root>\n    </Loggers>\n</Configuration>",
        logger_ref = rolling_ref("            "),
        root_ref = rolling_ref("            "),
    )
}

/// The log4j2 YAML configuration (`javaLog4JConfigFileType: yaml`).
pub fn log4j_yaml(log: Option<&RuntimeLogConfig>, sidecar: bool) -> String {
    let level = java_level(log).unwrap_or("INFO");
    let json_layout = "\n      JSONLayout:\n        complete: false\n        compact: true\n        eventEol: true\n      ";
    let console_layout = if is_json(log) {
        json_layout.to_owned()
    } else {
        "\n      PatternLayout:\n        Pattern: \\\"%d{ISO8601_OFFSET_DATE_TIME_HHMM} [%t] %-5level %logger{36} - %msg%n\\\"\n      ".to_owned()
    };
    let file_layout = if is_json(log) {
        json_layout.to_owned()
    } else {
        "\n      PatternLayout:\n        Pattern: \\\"%d{yyyy-MMM-dd HH:mm:ss a} [%t] %-5level %logger{36} - %msg%n\\\"\n      ".to_owned()
    };
    let policy = match rotation(log, sidecar) {
        Some(RotatePolicy::TimedPolicyWithDaily) => "\n        CronTriggeringPolicy:\n          schedule: \\\"0 0 0 * * ? *\\\"\n        ",
        Some(RotatePolicy::TimedPolicyWithWeekly) => "\n        CronTriggeringPolicy:\n          schedule: \\\"0 0 0 ? * 1 *\\\"\n        ",
        Some(RotatePolicy::TimedPolicyWithMonthly) => "\n        CronTriggeringPolicy:\n          schedule: \\\"0 0 0 1 * ? *\\\"\n        ",
        Some(RotatePolicy::SizedPolicyWith10Mb) => "\n        SizeBasedTriggeringPolicy:\n          size: \\\"10MB\\\"\n        ",
        Some(RotatePolicy::SizedPolicyWith50Mb) => "\n        SizeBasedTriggeringPolicy:\n          size: \\\"50MB\\\"\n        ",
        Some(RotatePolicy::SizedPolicyWith100Mb) => "\n        SizeBasedTriggeringPolicy:\n          size: \\\"100MB\\\"\n        ",
        None => "\n        TimeBasedTriggeringPolicy:\n          interval: 1\n          modulate: true\n        SizeBasedTriggeringPolicy:\n          size: \\\"10MB\\\"\n        ",
    };
    format!(
        "Configuration:\n  name: pulsar-functions-kubernetes-instance\n  monitorInterval: 30\n  Properties:\n    Property:\n    - name: pulsar.log.level\n      value: {level}\n    - name: bk.log.level\n      value: {level}\n\n  Appenders:\n    Console:\n      name: Console\n      target: SYSTEM_OUT\n      {console_layout}\n\n    RollingRandomAccessFile:\n      name: RollingRandomAccessFile\n      fileName: \\\"\\${{sys:pulsar.function.log.dir}}/\\${{sys:pulsar.function.log.file}}.log\\\"\n      filePattern: \\\"\\${{sys:pulsar.function.log.dir}}/\\${{sys:pulsar.function.log.file}}.%d{{yyyy-MM-dd}}-%i.log.gz\\\"\n      {file_layout}\n      Policies:\n        {policy}\n\n      DefaultRolloverStrategy:\n        max: 5\n\n  Loggers:\n    Root:\n      level: \\\"\\${{sys:pulsar.log.level}}\\\"\n      AppenderRef:\n        - ref: Console\n          level: \\\"\\${{sys:pulsar.log.level}}\\\"\n        - ref: RollingRandomAccessFile\n    Logger:\n      name: org.apache.pulsar.functions.runtime.shaded.org.apache.bookkeeper\n      level: \\\"\\${{sys:bk.log.level}}\\\"\n      additivity: false\n      AppenderRef:\n      - ref: Console\n      - ref: RollingRandomAccessFile\n"
    )
}

/// The Python logging INI (`python_instance_logging.ini`), in the shape the operator's
/// v0.27 `TestRenderINI_*` tests pin: `logging.*` handler classes, one `formatter` section
/// (JSON through python-json-logger), rotation handlers writing `logs/functions/<file>.log`.
pub fn python_ini(file: &str, log: Option<&RuntimeLogConfig>, sidecar: bool) -> String {
    let level = python_level(log).unwrap_or("INFO");
    let path = format!("logs/functions/{file}.log");
    let rolling = rotation(log, sidecar).map(|policy| {
        let (name, class, args) = match policy {
            RotatePolicy::TimedPolicyWithDaily => ("timed_rotating_file_handler", "TimedRotatingFileHandler", format!("'{path}', 'D', 1, 5")),
            RotatePolicy::TimedPolicyWithWeekly => ("timed_rotating_file_handler", "TimedRotatingFileHandler", format!("'{path}', 'W0', 1, 5")),
            RotatePolicy::TimedPolicyWithMonthly => ("timed_rotating_file_handler", "TimedRotatingFileHandler", format!("'{path}', 'D', 30, 5")),
            RotatePolicy::SizedPolicyWith10Mb => ("rotating_file_handler", "RotatingFileHandler", format!("'{path}', 'a', 10485760, 5")),
            RotatePolicy::SizedPolicyWith50Mb => ("rotating_file_handler", "RotatingFileHandler", format!("'{path}', 'a', 52428800, 5")),
            RotatePolicy::SizedPolicyWith100Mb => ("rotating_file_handler", "RotatingFileHandler", format!("'{path}', 'a', 104857600, 5")),
        };
        (name, format!("\n[handler_{name}]\nclass=logging.handlers.{class}\nlevel={level}\nformatter=formatter\nargs=({args})\n"))
    });
    let handlers = match &rolling {
        Some((name, _)) => format!("stream_handler,{name}"),
        None => "stream_handler".to_owned(),
    };
    let rolling_section = rolling.map(|(_, section)| section).unwrap_or_default();
    let formatter = if is_json(log) {
        "class=pythonjsonlogger.jsonlogger.JsonFormatter\nformat=%(message)s"
    } else {
        "format=[%(asctime)s] [%(levelname)s] %(filename)s:%(lineno)d %(message)s\ndatefmt=%Y-%m-%d %H:%M:%S %z"
    };
    format!(
        "[loggers]\nkeys=root\n\n[handlers]\nkeys={handlers}\n\n[formatters]\nkeys=formatter\n\n[logger_root]\nlevel={level}\nhandlers={handlers}\n\n[handler_stream_handler]\nclass=logging.StreamHandler\nlevel={level}\nformatter=formatter\nargs=(sys.stdout,)\n{rolling_section}\n[formatter_formatter]\n{formatter}\n"
    )
}

/// The command that writes the Java log configuration, and the path the JVM reads it from.
fn java_log_config(r: &RunnerSpec) -> (String, String) {
    let log = r.spec.java.as_ref().and_then(|j| j.log.as_ref());
    let yaml = log.and_then(|l| l.java_log4j_config_file_type) == Some(Log4jConfigFileType::Yaml);
    let path = format!(
        "{JAVA_LOG_DIR}{}",
        if yaml {
            "java_instance_log4j.yaml"
        } else {
            "java_instance_log4j.xml"
        }
    );
    if log.is_some_and(|l| l.log_config.is_some()) {
        return (String::new(), path);
    }
    let text = if yaml {
        log4j_yaml(log, r.sidecar_logs())
    } else {
        log4j_xml(log, r.sidecar_logs())
    };
    (
        format!("mkdir -p {JAVA_LOG_DIR} && echo \"{text}\" > {path} && "),
        path,
    )
}

fn python_log_config(r: &RunnerSpec) -> String {
    let mut command =
        "sed -i.bak 's/^  Log.setLevel/#&/' /pulsar/instances/python-instance/log.py && "
            .to_owned();
    let log = r.spec.python.as_ref().and_then(|p| p.log.as_ref());
    if log.is_some_and(|l| l.log_config.is_some()) {
        return command;
    }
    let ini = python_ini(
        &format!("{}-${{SHARD_ID}}", r.pulsar_name()),
        log,
        r.sidecar_logs(),
    );
    command.push_str(&format!(
        "mkdir -p {PYTHON_LOG_DIR} logs/functions && echo \"{ini}\" > {PYTHON_LOG_FILE} && "
    ));
    if let Some(level) = python_level(log) {
        command.push_str(&format!(
            "sed -i.bak 's/^level=.*/level={level}/g' {PYTHON_LOG_FILE} && "
        ));
    }
    command
}

/// `limits.memory / 5` as a DecimalSI quantity (`1.1G` → `220M`); `0` without a limit.
pub fn max_direct_memory(r: &RunnerSpec) -> String {
    let bytes = r
        .spec
        .resources
        .as_ref()
        .and_then(|res| res.limits.as_ref()?.get("memory"))
        .and_then(super::quantity)
        .map_or(0, |b| b.ceil() as i128)
        / 5;
    decimal_si(bytes)
}

fn decimal_si(value: i128) -> String {
    if value == 0 {
        return "0".into();
    }
    let mut value = value;
    let mut suffix = "";
    for s in ["k", "M", "G", "T", "P", "E"] {
        if value % 1000 != 0 {
            break;
        }
        value /= 1000;
        suffix = s;
    }
    format!("{value}{suffix}")
}

/// Where the package is read from and, when the main container downloads it, the command.
pub struct Package {
    /// Path the runtime loads (normalised under /pulsar in init-container mode).
    pub path: String,
    pub download: Option<String>,
}

/// The main container's `command`.
pub fn container_command(
    r: &RunnerSpec,
    package: &Package,
    function_id: &str,
    details: &str,
) -> Vec<String> {
    let s = &r.spec;
    let download = package
        .download
        .as_ref()
        .map(|d| format!("{d} && "))
        .unwrap_or_default();
    if let Some(go) = &s.golang {
        let _ = go;
        let conf = details::go_function_conf(r, function_id);
        let conf = serde_json::to_string(&conf)
            .unwrap_or_default()
            .replace("\"instanceID\":0", "\"instanceID\":${SHARD_ID}")
            .replace('"', "\\\"");
        let exe = &package.path;
        let download = package
            .download
            .as_ref()
            .map(|d| format!("{d} && ls -al && pwd &&"))
            .unwrap_or_default();
        let run = [
            format!("GO_FUNCTION_CONF={conf}"),
            "&&".into(),
            "goFunctionConfigs=${GO_FUNCTION_CONF}".into(),
            "&&".into(),
            "echo goFunctionConfigs=\"'${goFunctionConfigs}'\"".into(),
            "&&".into(),
            "ls -l".into(),
            exe.clone(),
            "&&".into(),
            "chmod +x".into(),
            exe.clone(),
            "&&".into(),
            "exec".into(),
            exe.clone(),
            "-instance-conf".into(),
            "${goFunctionConfigs}".into(),
        ]
        .join(" ");
        return vec![
            "bash".into(),
            "-c".into(),
            format!("{download}{SHARD_ID} && {run}"),
        ];
    }
    if let Some(generic) = &s.generic_runtime {
        let mut args = vec![
            "exec".to_owned(),
            "pulsar_rust_instance".into(),
            "--function_file".into(),
            package.path.clone(),
            "--language".into(),
            generic.language.clone(),
        ];
        args.extend(shared_args(r, details, function_id));
        if s.secrets_map.as_ref().is_some_and(|m| !m.is_empty()) {
            let provider = if generic.language == "python" {
                "secrets_provider.EnvironmentBasedSecretsProvider"
            } else {
                "EnvironmentBasedSecretsProvider"
            };
            args.extend(["--secrets_provider".into(), provider.into()]);
        }
        push_state(r, &mut args, false);
        return vec![
            "sh".into(),
            "-c".into(),
            format!("{download}{SHARD_ID} && {}", args.join(" ")),
        ];
    }
    if s.python.is_some() {
        let mut args = vec![
            "exec".to_owned(),
            "python".into(),
            "/pulsar/instances/python-instance/python_instance_main.py".into(),
            "--py".into(),
            package.path.clone(),
            "--logging_directory".into(),
            "logs/functions".into(),
            "--logging_file".into(),
            format!("{}-${{SHARD_ID}}.log", r.pulsar_name()),
            "--logging_config_file".into(),
            PYTHON_LOG_FILE.into(),
            "--install_usercode_dependencies".into(),
            "true".into(),
        ];
        args.extend(shared_args(r, details, function_id));
        if s.secrets_map.as_ref().is_some_and(|m| !m.is_empty()) {
            args.extend([
                "--secrets_provider".into(),
                "secretsprovider.EnvironmentBasedSecretsProvider".into(),
            ]);
        }
        push_state(r, &mut args, false);
        return vec![
            "bash".into(),
            "-c".into(),
            format!(
                "{download}{SHARD_ID} && {}{}",
                python_log_config(r),
                args.join(" ")
            ),
        ];
    }
    let java = s.java.clone().unwrap_or_default();
    let (log_command, log_path) = java_log_config(r);
    let mut class_path = format!(
        "{}:$(echo /pulsar/lib/com.fasterxml.jackson.dataformat-jackson-dataformat-yaml-*.jar):$(echo /pulsar/lib/org.yaml-snakeyaml-*.jar)",
        java.instance_path.as_deref().unwrap_or("/pulsar/instances/java-instance.jar")
    );
    if let Some(dir) = java
        .extra_dependencies_dir
        .as_deref()
        .filter(|d| !d.is_empty())
    {
        class_path.push_str(&format!(":{dir}/*"));
    }
    let level = java_level(java.log.as_ref())
        .map(|l| format!("-Dpulsar.log.level={l} -Dbk.log.level={l}"))
        .unwrap_or_default();
    let mut args = vec![
        "exec".to_owned(),
        "java".into(),
        "-cp".into(),
        class_path,
        "-Dpulsar.functions.instance.classpath=/pulsar/lib/*".into(),
        format!("-Dlog4j.configurationFile={log_path}"),
        "-Dpulsar.function.log.dir=logs/functions".into(),
        format!(
            "-Dpulsar.function.log.file={}-${{SHARD_ID}}",
            r.pulsar_name()
        ),
        "-Dpulsar.allocator.exit_on_oom=true".into(),
        level,
        "-XX:MaxRAMPercentage=70".into(),
        format!("-XX:MaxDirectMemorySize={}", max_direct_memory(r)),
        "-XX:+UseG1GC".into(),
        "-XX:+HeapDumpOnOutOfMemoryError".into(),
        "-XX:HeapDumpPath=/pulsar/tmp/heapdump-%p.hprof".into(),
        "-XX:+ExitOnOutOfMemoryError".into(),
        "-Xlog:gc*:file=/pulsar/logs/gc.log:time,level,tags:filecount=5,filesize=10M".into(),
        java.java_opts.clone().unwrap_or_default().join(" "),
        java.entry_class
            .clone()
            .unwrap_or_else(|| "org.apache.pulsar.functions.instance.JavaInstanceMain".into()),
        "--jar".into(),
        package.path.clone(),
    ];
    args.extend(shared_args(r, details, function_id));
    if r.kind == ComponentKind::Function && (s.source_config.is_some() || s.sink_config.is_some()) {
        args.extend(["--connectors_directory".into(), "/pulsar/connectors".into()]);
    }
    if s.secrets_map.as_ref().is_some_and(|m| !m.is_empty()) {
        args.extend([
            "--secrets_provider".into(),
            "org.apache.pulsar.functions.secretsprovider.EnvironmentBasedSecretsProvider".into(),
        ]);
    }
    push_state(r, &mut args, true);
    if r.kind == ComponentKind::Function {
        if let Some(n) = s.max_pending_async_requests {
            args.extend(["--pending_async_requests".into(), n.to_string()]);
        }
    }
    vec![
        "bash".into(),
        "-c".into(),
        format!("{download}{SHARD_ID} && {log_command}{}", args.join(" ")),
    ]
}

fn push_state(r: &RunnerSpec, args: &mut Vec<String>, java: bool) {
    let Some(pulsar) = r
        .spec
        .stateful_config
        .as_ref()
        .and_then(|s| s.pulsar.as_ref())
    else {
        return;
    };
    if pulsar.service_url.is_empty() {
        return;
    }
    args.extend([
        "--state_storage_serviceurl".into(),
        pulsar.service_url.clone(),
    ]);
    if java {
        if let Some(provider) = &pulsar.java_provider {
            args.extend([
                "--state_storage_impl_class".into(),
                provider.class_name.clone(),
            ]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{OAuth2Config, PulsarTlsConfig};

    #[test]
    fn quotes_like_the_operator() {
        assert_eq!(shell_quote("a'b"), r#"'a'"'"'b'"#);
        assert_eq!(shell_quote(r#"{"k":"v"}"#), r#"'{"k":"v"}'"#);
    }

    #[test]
    fn formats_decimal_si() {
        assert_eq!(decimal_si(220_000_000), "220M");
        assert_eq!(decimal_si(214_748_364), "214748364");
        assert_eq!(decimal_si(0), "0");
        assert_eq!(decimal_si(2_000), "2k");
    }

    fn argv(
        location: &str,
        tools: Tools,
        m: &PulsarMessaging,
        prefix: &'static str,
    ) -> Vec<String> {
        download_args(
            location,
            "function.jar",
            tools,
            &Connection {
                messaging: m,
                prefix,
            },
        )
    }

    const ADMIN: Tools = Tools {
        pulsarctl: false,
        wget: false,
    };
    const CTL: Tools = Tools {
        pulsarctl: true,
        wget: true,
    };

    /// Cases the operator's table leaves out: the package service's `PACKAGE_` variables and
    /// mount paths, and the legacy authSecret/tlsSecret through pulsarctl.
    #[test]
    fn download_argv_for_the_package_service_and_legacy_secrets() {
        let plain = PulsarMessaging::default();
        assert_eq!(
            argv("function://public/default/test@v1", ADMIN, &plain, ""),
            [
                "/pulsar/bin/pulsar-admin",
                "--admin-url",
                "$webServiceURL",
                "packages",
                "download",
                "function://public/default/test@v1",
                "--path",
                "function.jar"
            ]
        );
        assert_eq!(
            argv("public/default/test", ADMIN, &plain, ""),
            [
                "/pulsar/bin/pulsar-admin",
                "--admin-url",
                "$webServiceURL",
                "functions",
                "download",
                "--path",
                "public/default/test",
                "--destination-file",
                "function.jar"
            ]
        );
        assert_eq!(
            argv("https://example.com/f.jar", CTL, &plain, ""),
            ["wget", "https://example.com/f.jar", "-O", "function.jar"]
        );
        // Without wget an http URL goes through the admin tool.
        assert_eq!(
            argv("http://example.com/f.jar", ADMIN, &plain, "")[3],
            "functions"
        );
        let oauth2 = PulsarMessaging {
            auth_config: Some(AuthConfig {
                oauth2_config: Some(OAuth2Config {
                    audience: "urn:aud".into(),
                    issuer_url: "https://issuer/".into(),
                    scope: Some("read".into()),
                    key_secret_name: "key".into(),
                    key_secret_key: "auth.json".into(),
                }),
                generic_auth: None,
            }),
            ..Default::default()
        };
        assert_eq!(
            argv("sink://public/default/es@1", CTL, &oauth2, "").join(" "),
            "export PATH=$PATH:/pulsar/bin &&  pulsarctl context set downloader --admin-service-url $webServiceURL --issuer-endpoint https://issuer/ --audience urn:aud --key-file /etc/oauth2/auth.json --scope read && pulsarctl oauth2 activate && pulsarctl packages download sink://public/default/es@1 --path function.jar"
        );
        assert_eq!(
            argv("function://p/d/f", ADMIN, &oauth2, "PACKAGE_")[..7].join(" "),
            format!("/pulsar/bin/pulsar-admin --admin-url $PACKAGE_webServiceURL --auth-plugin {OAUTH2_PLUGIN} --auth-params {}",
                oauth2_params(oauth2.auth_config.as_ref().unwrap().oauth2_config.as_ref().unwrap(), "/etc/oauth2-package-service"))
        );
        let legacy = PulsarMessaging {
            auth_secret: Some("auth".into()),
            tls_secret: Some("tls".into()),
            ..Default::default()
        };
        assert_eq!(
            argv("function://p/d/f", CTL, &legacy, "").join(" "),
            "export PATH=$PATH:/pulsar/bin &&  ( pulsarctl oauth2 activate --auth-params $clientAuthenticationParameters || true ) && pulsarctl --auth-plugin $clientAuthenticationPlugin --auth-params $clientAuthenticationParameters --admin-service-url $webServiceURL --tls-allow-insecure=${tlsAllowInsecureConnection:-false} --tls-enable-hostname-verification=${tlsHostnameVerificationEnable:-true} --tls-trust-cert-path $tlsTrustCertsFilePath packages download function://p/d/f --path function.jar"
        );
        let tls = PulsarMessaging {
            tls_config: Some(PulsarTlsConfig {
                enabled: Some(true),
                allow_insecure: Some(false),
                hostname_verification: Some(true),
                cert_secret_name: Some("ca".into()),
                cert_secret_key: Some("ca.crt".into()),
            }),
            ..Default::default()
        };
        assert_eq!(
            argv("function://p/d/f", ADMIN, &tls, "").join(" "),
            "/pulsar/bin/pulsar-admin --admin-url $webServiceURL --tls-enable-hostname-verification --tls-trust-cert-path /etc/tls/pulsar-functions/ca.crt packages download function://p/d/f --path function.jar"
        );
    }

    /// Every row of the operator's `TestGetDownloadCommand` (controllers/spec/common_test.go,
    /// v0.27), with its exact argv.
    #[test]
    fn download_argv_matches_every_row_of_the_operators_test() {
        enum Auth {
            None,
            OAuth2,
            Generic,
        }
        let tls = |enabled, allow_insecure, hostname_verification| {
            Some(PulsarTlsConfig {
                enabled: Some(enabled),
                allow_insecure: Some(allow_insecure),
                hostname_verification: Some(hostname_verification),
                cert_secret_name: Some("test-secret".into()),
                cert_secret_key: Some("test-key".into()),
            })
        };
        let oauth2 = OAuth2Config {
            audience: "test-audience".into(),
            issuer_url: "test-issuer-url".into(),
            scope: None,
            key_secret_name: "test-private-key".into(),
            key_secret_key: "auth.json".into(),
        };
        let oauth2_params_text = oauth2_params(&oauth2, OAUTH2_MOUNT);
        let ctl = "export PATH=$PATH:/pulsar/bin && ";
        /// (location, package, TLS, auth, image has pulsarctl and wget, expected argv)
        type Row<'a> = (
            &'a str,
            &'a str,
            Option<PulsarTlsConfig>,
            Auth,
            bool,
            Vec<&'a str>,
        );
        let rows: Vec<Row<'_>> = vec![
            (
                "function://public/default/test@v1",
                "function-package.jar",
                None,
                Auth::None,
                true,
                vec![
                    ctl,
                    "pulsarctl",
                    "--admin-service-url",
                    "$webServiceURL",
                    "packages",
                    "download",
                    "function://public/default/test@v1",
                    "--path",
                    "function-package.jar",
                ],
            ),
            (
                "sink://public/default/test@v1",
                "sink-package.jar",
                None,
                Auth::None,
                true,
                vec![
                    ctl,
                    "pulsarctl",
                    "--admin-service-url",
                    "$webServiceURL",
                    "packages",
                    "download",
                    "sink://public/default/test@v1",
                    "--path",
                    "sink-package.jar",
                ],
            ),
            (
                "source://public/default/test@v1",
                "source-package.jar",
                None,
                Auth::None,
                true,
                vec![
                    ctl,
                    "pulsarctl",
                    "--admin-service-url",
                    "$webServiceURL",
                    "packages",
                    "download",
                    "source://public/default/test@v1",
                    "--path",
                    "source-package.jar",
                ],
            ),
            (
                "/test",
                "test.jar",
                None,
                Auth::None,
                true,
                vec![
                    ctl,
                    "pulsarctl",
                    "--admin-service-url",
                    "$webServiceURL",
                    "functions",
                    "download",
                    "--path",
                    "/test",
                    "--destination-file",
                    "test.jar",
                ],
            ),
            (
                "source/public/default/test@v1",
                "source-package.jar",
                None,
                Auth::None,
                true,
                vec![
                    ctl,
                    "pulsarctl",
                    "--admin-service-url",
                    "$webServiceURL",
                    "functions",
                    "download",
                    "--path",
                    "source/public/default/test@v1",
                    "--destination-file",
                    "source-package.jar",
                ],
            ),
            (
                "source:/public/default/test@v1",
                "source-package.jar",
                None,
                Auth::None,
                true,
                vec![
                    ctl,
                    "pulsarctl",
                    "--admin-service-url",
                    "$webServiceURL",
                    "functions",
                    "download",
                    "--path",
                    "source:/public/default/test@v1",
                    "--destination-file",
                    "source-package.jar",
                ],
            ),
            (
                "function://public/default/test@v1",
                "function-package.jar",
                None,
                Auth::OAuth2,
                true,
                vec![
                    ctl,
                    "pulsarctl",
                    "context",
                    "set",
                    "downloader",
                    "--admin-service-url",
                    "$webServiceURL",
                    "--issuer-endpoint",
                    "test-issuer-url",
                    "--audience",
                    "test-audience",
                    "--key-file",
                    "/etc/oauth2/auth.json",
                    "&& pulsarctl",
                    "oauth2",
                    "activate",
                    "&& pulsarctl",
                    "packages",
                    "download",
                    "function://public/default/test@v1",
                    "--path",
                    "function-package.jar",
                ],
            ),
            (
                "function://public/default/test@v1",
                "function-package.jar",
                tls(true, false, true),
                Auth::None,
                true,
                vec![
                    ctl,
                    "pulsarctl",
                    "--admin-service-url",
                    "$webServiceURL",
                    "--tls-allow-insecure=false",
                    "--tls-enable-hostname-verification=true",
                    "--tls-trust-cert-path",
                    "/etc/tls/pulsar-functions/test-key",
                    "packages",
                    "download",
                    "function://public/default/test@v1",
                    "--path",
                    "function-package.jar",
                ],
            ),
            (
                "function://public/default/test@v1",
                "function-package.jar",
                tls(false, false, true),
                Auth::None,
                true,
                vec![
                    ctl,
                    "pulsarctl",
                    "--admin-service-url",
                    "$webServiceURL",
                    "packages",
                    "download",
                    "function://public/default/test@v1",
                    "--path",
                    "function-package.jar",
                ],
            ),
            (
                "function://public/default/test@v1",
                "function-package.jar",
                tls(true, true, false),
                Auth::None,
                true,
                vec![
                    ctl,
                    "pulsarctl",
                    "--admin-service-url",
                    "$webServiceURL",
                    "--tls-allow-insecure=true",
                    "--tls-enable-hostname-verification=false",
                    "--tls-trust-cert-path",
                    "/etc/tls/pulsar-functions/test-key",
                    "packages",
                    "download",
                    "function://public/default/test@v1",
                    "--path",
                    "function-package.jar",
                ],
            ),
            (
                "function://public/default/test@v1",
                "function-package.jar",
                tls(true, true, false),
                Auth::Generic,
                true,
                vec![
                    ctl,
                    "( pulsarctl",
                    "oauth2",
                    "activate",
                    "--auth-params",
                    "'auth-params'",
                    "|| true ) &&",
                    "pulsarctl",
                    "--auth-plugin",
                    "auth-plugin",
                    "--auth-params",
                    "'auth-params'",
                    "--admin-service-url",
                    "$webServiceURL",
                    "--tls-allow-insecure=true",
                    "--tls-enable-hostname-verification=false",
                    "--tls-trust-cert-path",
                    "/etc/tls/pulsar-functions/test-key",
                    "packages",
                    "download",
                    "function://public/default/test@v1",
                    "--path",
                    "function-package.jar",
                ],
            ),
            (
                "http://aaa.bbb.ccc/test.jar",
                "function-package.jar",
                tls(true, true, false),
                Auth::None,
                true,
                vec![
                    "wget",
                    "http://aaa.bbb.ccc/test.jar",
                    "-O",
                    "function-package.jar",
                ],
            ),
            (
                "function://public/default/test@v1",
                "function-package.jar",
                None,
                Auth::OAuth2,
                false,
                vec![
                    "/pulsar/bin/pulsar-admin",
                    "--admin-url",
                    "$webServiceURL",
                    "--auth-plugin",
                    OAUTH2_PLUGIN,
                    "--auth-params",
                    &oauth2_params_text,
                    "packages",
                    "download",
                    "function://public/default/test@v1",
                    "--path",
                    "function-package.jar",
                ],
            ),
            (
                "sink://public/default/test@v1",
                "sink-package.jar",
                None,
                Auth::Generic,
                false,
                vec![
                    "/pulsar/bin/pulsar-admin",
                    "--admin-url",
                    "$webServiceURL",
                    "--auth-plugin",
                    "auth-plugin",
                    "--auth-params",
                    "'auth-params'",
                    "packages",
                    "download",
                    "sink://public/default/test@v1",
                    "--path",
                    "sink-package.jar",
                ],
            ),
            (
                "source://public/default/test@v1",
                "source-package.jar",
                tls(true, false, true),
                Auth::None,
                false,
                vec![
                    "/pulsar/bin/pulsar-admin",
                    "--admin-url",
                    "$webServiceURL",
                    "--tls-enable-hostname-verification",
                    "--tls-trust-cert-path",
                    "/etc/tls/pulsar-functions/test-key",
                    "packages",
                    "download",
                    "source://public/default/test@v1",
                    "--path",
                    "source-package.jar",
                ],
            ),
            (
                "/test",
                "test.jar",
                tls(true, true, true),
                Auth::None,
                false,
                vec![
                    "/pulsar/bin/pulsar-admin",
                    "--admin-url",
                    "$webServiceURL",
                    "--tls-allow-insecure",
                    "--tls-enable-hostname-verification",
                    "--tls-trust-cert-path",
                    "/etc/tls/pulsar-functions/test-key",
                    "functions",
                    "download",
                    "--path",
                    "/test",
                    "--destination-file",
                    "test.jar",
                ],
            ),
            (
                "source/public/default/test@v1",
                "source-package.jar",
                tls(true, true, false),
                Auth::None,
                false,
                vec![
                    "/pulsar/bin/pulsar-admin",
                    "--admin-url",
                    "$webServiceURL",
                    "--tls-allow-insecure",
                    "--tls-trust-cert-path",
                    "/etc/tls/pulsar-functions/test-key",
                    "functions",
                    "download",
                    "--path",
                    "source/public/default/test@v1",
                    "--destination-file",
                    "source-package.jar",
                ],
            ),
            (
                "source:/public/default/test@v1",
                "source-package.jar",
                tls(false, true, false),
                Auth::None,
                false,
                vec![
                    "/pulsar/bin/pulsar-admin",
                    "--admin-url",
                    "$webServiceURL",
                    "functions",
                    "download",
                    "--path",
                    "source:/public/default/test@v1",
                    "--destination-file",
                    "source-package.jar",
                ],
            ),
        ];
        assert_eq!(rows.len(), 18);
        for (location, package, tls_config, auth, has_pulsarctl, expected) in rows {
            let auth_config = match auth {
                Auth::None => AuthConfig::default(),
                Auth::OAuth2 => AuthConfig {
                    oauth2_config: Some(oauth2.clone()),
                    generic_auth: None,
                },
                Auth::Generic => AuthConfig {
                    oauth2_config: None,
                    generic_auth: Some(crate::model::GenericAuth {
                        client_authentication_plugin: "auth-plugin".into(),
                        client_authentication_parameters: "auth-params".into(),
                    }),
                },
            };
            let messaging = PulsarMessaging {
                tls_config,
                auth_config: Some(auth_config),
                ..Default::default()
            };
            let tools = Tools {
                pulsarctl: has_pulsarctl,
                wget: has_pulsarctl,
            };
            let actual = download_args(
                location,
                package,
                tools,
                &Connection {
                    messaging: &messaging,
                    prefix: "",
                },
            );
            assert_eq!(actual, expected, "{location}");
        }
    }

    /// The operator's v0.27 `TestRenderINI_*` assertions, plus the full default text.
    #[test]
    fn python_logging_ini_satisfies_the_operators_tests() {
        let text = |format, rotate_policy| RuntimeLogConfig {
            level: Some(LogLevel::Info),
            format: Some(format),
            rotate_policy,
            ..Default::default()
        };
        let plain = python_ini("demo", Some(&text(LogFormat::Text, None)), false);
        assert_eq!(
            plain,
            "[loggers]\nkeys=root\n\n[handlers]\nkeys=stream_handler\n\n[formatters]\nkeys=formatter\n\n[logger_root]\nlevel=INFO\nhandlers=stream_handler\n\n[handler_stream_handler]\nclass=logging.StreamHandler\nlevel=INFO\nformatter=formatter\nargs=(sys.stdout,)\n\n[formatter_formatter]\nformat=[%(asctime)s] [%(levelname)s] %(filename)s:%(lineno)d %(message)s\ndatefmt=%Y-%m-%d %H:%M:%S %z\n"
        );
        assert!(
            !plain.contains("[handler_rotating_file_handler]")
                && !plain.contains("keys=handler_stream_handler")
        );
        let json = python_ini("demo", Some(&text(LogFormat::Json, None)), false);
        assert!(json.contains("[formatter_formatter]\nclass=pythonjsonlogger.jsonlogger.JsonFormatter\nformat=%(message)s"));
        for (policy, size) in [
            (RotatePolicy::SizedPolicyWith10Mb, "10485760"),
            (RotatePolicy::SizedPolicyWith50Mb, "52428800"),
            (RotatePolicy::SizedPolicyWith100Mb, "104857600"),
        ] {
            let ini = python_ini("demo", Some(&text(LogFormat::Text, Some(policy))), false);
            assert!(
                ini.contains("[handlers]\nkeys=stream_handler,rotating_file_handler"),
                "{ini}"
            );
            assert!(ini.contains(
                "[handler_rotating_file_handler]\nclass=logging.handlers.RotatingFileHandler"
            ));
            assert!(
                ini.contains(&format!("args=('logs/functions/demo.log', 'a', {size}, 5)")),
                "{ini}"
            );
        }
        for (policy, when, interval) in [
            (RotatePolicy::TimedPolicyWithDaily, "D", "1"),
            (RotatePolicy::TimedPolicyWithWeekly, "W0", "1"),
            (RotatePolicy::TimedPolicyWithMonthly, "D", "30"),
        ] {
            let ini = python_ini("demo", Some(&text(LogFormat::Json, Some(policy))), false);
            assert!(ini.contains("[handlers]\nkeys=stream_handler,timed_rotating_file_handler"));
            assert!(ini.contains(
                "class=logging.handlers.TimedRotatingFileHandler\nlevel=INFO\nformatter=formatter"
            ));
            assert!(
                ini.contains(&format!(
                    "args=('logs/functions/demo.log', '{when}', {interval}, 5)"
                )),
                "{ini}"
            );
            assert!(ini.contains("class=pythonjsonlogger.jsonlogger.JsonFormatter"));
        }
        let sidecar = python_ini("demo", Some(&text(LogFormat::Text, None)), true);
        assert!(sidecar.contains("keys=stream_handler,rotating_file_handler"));
        assert!(sidecar.contains("args=('logs/functions/demo.log', 'a', 10485760, 5)"));
    }

    /// What `java-runtime-log4j.xml.tmpl` produces for the default and a rolling config.
    #[test]
    fn log4j_xml_matches_the_operator_template() {
        let default = log4j_xml(None, false);
        assert!(default.starts_with("<Configuration>\n    <name>pulsar-functions-kubernetes-instance</name>\n    <monitorInterval>30</monitorInterval>\n    <Properties>\n        <Property>\n            <name>pulsar.log.level</name>\n            <value>INFO</value>"));
        assert!(default.contains("<target>SYSTEM_OUT</target>\n            \n            <PatternLayout>\n                <Pattern>%d{ISO8601_OFFSET_DATE_TIME_HHMM} [%t] %-5level %logger{36} - %msg%n</Pattern>\n            </PatternLayout>\n            \n        </Console>\n    </Appenders>"));
        assert!(default.ends_with("            <AppenderRef>\n                <ref>Console</ref>\n                <level>\\${sys:pulsar.log.level}</level>\n            </AppenderRef>\n        </Root>\n    </Loggers>\n</Configuration>"));
        assert!(!default.contains("RollingRandomAccessFile"));
        let weekly = RuntimeLogConfig {
            rotate_policy: Some(RotatePolicy::TimedPolicyWithWeekly),
            level: Some(LogLevel::Warn),
            ..Default::default()
        };
        let rolling = log4j_xml(Some(&weekly), false);
        assert!(rolling.contains("<value>WARN</value>"));
        assert!(rolling.contains("</Console>\n        <RollingRandomAccessFile>\n            <name>RollingRandomAccessFile</name>"));
        assert!(rolling.contains("<Policies>\n                <CronTriggeringPolicy>\n                    <schedule>\"0 0 0 \\? \\* 1 *\"</schedule>\n                </CronTriggeringPolicy>\n            </Policies>"));
        assert_eq!(
            rolling
                .matches("<ref>RollingRandomAccessFile</ref>")
                .count(),
            2
        );
    }
}
