//! `kairn get <kind> [name]`: objects as tables (the server's columns), YAML or JSON.

use std::process::ExitCode;

use anyhow::{bail, Context};
use kube::api::{ApiResource, DynamicObject, ListParams};
use kube::Api;
use serde_json::Value;

use crate::client::{self, ClientArgs, Output};

/// `kairn get` arguments.
#[derive(Debug, clap::Args)]
pub struct GetArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Kind, plural, singular or short name (`pods`, `pod`, `po`, `Deployment`, `deploy`).
    pub kind: String,
    /// One object's name.
    pub name: Option<String>,
    /// List across all namespaces.
    #[arg(short = 'A', long)]
    pub all_namespaces: bool,
}

/// A served resource, as discovery describes it.
pub struct Resolved {
    /// kube-rs description of the resource.
    pub resource: ApiResource,
    /// Whether it lives in namespaces.
    pub namespaced: bool,
}

/// Finds the resource a user's word names, through the API server's discovery.
pub async fn resolve(client: &kube::Client, word: &str) -> anyhow::Result<Resolved> {
    let word = word.to_lowercase();
    let mut lists = vec![client
        .list_core_api_resources("v1")
        .await
        .context("discovering core resources")?];
    for group in client.list_api_groups().await.context("discovering API groups")?.groups {
        if let Some(v) = group.preferred_version.or_else(|| group.versions.first().cloned()) {
            lists.push(
                client
                    .list_api_group_resources(&v.group_version)
                    .await
                    .context("discovering resources")?,
            );
        }
    }
    for list in &lists {
        for r in list.resources.iter().filter(|r| !r.name.contains('/')) {
            let short = r.short_names.iter().flatten().any(|s| *s == word);
            let matches = r.name == word || r.singular_name == word || r.kind.to_lowercase() == word || short;
            if matches {
                let (group, version) = match list.group_version.split_once('/') {
                    Some((g, v)) => (g.to_string(), v.to_string()),
                    None => (String::new(), list.group_version.clone()),
                };
                let resource = ApiResource {
                    group,
                    version,
                    api_version: list.group_version.clone(),
                    kind: r.kind.clone(),
                    plural: r.name.clone(),
                };
                return Ok(Resolved {
                    resource,
                    namespaced: r.namespaced,
                });
            }
        }
    }
    bail!("the server doesn't have a resource type \"{word}\"")
}

fn url(res: &Resolved, ns: Option<&str>, name: Option<&str>) -> String {
    let base = if res.resource.group.is_empty() {
        format!("/api/{}", res.resource.version)
    } else {
        format!("/apis/{}", res.resource.api_version)
    };
    let scope = match ns {
        Some(ns) if res.namespaced => format!("/namespaces/{ns}"),
        _ => String::new(),
    };
    let name = name.map(|n| format!("/{n}")).unwrap_or_default();
    format!("{base}{scope}/{}{name}", res.resource.plural)
}

fn print_table(table: &Value, wide: bool, with_namespace: bool) {
    let columns = table["columnDefinitions"].as_array().cloned().unwrap_or_default();
    let keep: Vec<usize> = columns
        .iter()
        .enumerate()
        .filter(|(_, c)| wide || c["priority"].as_i64().unwrap_or(0) == 0)
        .map(|(i, _)| i)
        .collect();
    let mut rows: Vec<Vec<String>> = Vec::new();
    let mut header: Vec<String> = keep
        .iter()
        .map(|i| columns[*i]["name"].as_str().unwrap_or("").to_uppercase())
        .collect();
    if with_namespace {
        header.insert(0, "NAMESPACE".into());
    }
    rows.push(header);
    for row in table["rows"].as_array().into_iter().flatten() {
        let cells = row["cells"].as_array().cloned().unwrap_or_default();
        let mut out: Vec<String> = keep
            .iter()
            .map(|i| match cells.get(*i) {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Null) | None => String::new(),
                Some(v) => v.to_string(),
            })
            .collect();
        if with_namespace {
            out.insert(
                0,
                row.pointer("/object/metadata/namespace")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
            );
        }
        rows.push(out);
    }
    if rows.len() == 1 {
        eprintln!("No resources found.");
        return;
    }
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|c| {
            rows.iter()
                .map(|r| r.get(c).map_or(0, |s| s.chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, s)| format!("{s:<w$}", w = widths[i]))
            .collect();
        println!("{}", line.join("   ").trim_end());
    }
}

/// Runs `kairn get`.
pub async fn run(args: GetArgs) -> anyhow::Result<ExitCode> {
    let client = args.client.connect().await?;
    let res = resolve(&client, &args.kind).await?;
    let ns = if args.all_namespaces {
        None
    } else {
        Some(
            args.client
                .namespace
                .clone()
                .unwrap_or_else(|| client.default_namespace().to_string()),
        )
    };
    match args.client.output {
        Output::Table | Output::Wide => {
            let request = http::Request::get(url(&res, ns.as_deref(), args.name.as_deref()))
                .header(
                    http::header::ACCEPT,
                    "application/json;as=Table;v=v1;g=meta.k8s.io, application/json",
                )
                .body(Vec::new())
                .context("building the request")?;
            let table: Value = client
                .request(request)
                .await
                .map_err(client::server_error)
                .context("reading objects")?;
            print_table(
                &table,
                args.client.output == Output::Wide,
                args.all_namespaces && res.namespaced,
            );
        }
        Output::Yaml | Output::Json => {
            let api: Api<DynamicObject> = match &ns {
                Some(ns) if res.namespaced => Api::namespaced_with(client, ns, &res.resource),
                _ => Api::all_with(client, &res.resource),
            };
            let value = match &args.name {
                Some(name) => serde_json::to_value(
                    api.get(name)
                        .await
                        .map_err(client::server_error)
                        .with_context(|| format!("getting {name}"))?,
                )?,
                None => {
                    let list = api
                        .list(&ListParams::default())
                        .await
                        .map_err(client::server_error)
                        .context("listing")?;
                    serde_json::json!({"apiVersion": "v1", "kind": "List", "items": list.items})
                }
            };
            if args.client.output == Output::Yaml {
                print!("{}", kairn_reconciler::manifest::to_yaml(&value));
            } else {
                println!("{}", serde_json::to_string_pretty(&value)?);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
