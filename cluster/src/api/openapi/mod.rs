//! The OpenAPI documents of the served API, as kube-apiserver publishes them:
//! `/openapi/v2` (Swagger 2.0, as JSON or as gnostic protobuf, which is all kubectl asks
//! for) and `/openapi/v3` (an index, then one OpenAPI 3.0 document per group-version,
//! which `kubectl explain` and kubectl's field-validation check read).
//!
//! Everything is generated from [`RESOURCES`] and the schemas of [`schema`]: one path
//! model ([`PathSpec`]) is rendered by [`v2`] and [`v3`]. The documents are built once, on
//! first request, and served from the encoded bytes with an ETag.

mod gnostic;
mod v2;
mod v3;

use std::collections::BTreeMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::OnceLock;

use axum::body::Bytes;
use axum::extract::{Path, Query};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use prost::Message;
use schemars::generate::SchemaSettings;
use schemars::SchemaGenerator;
use serde_json::{json, Value};

use super::error::ApiError;
use super::registry::{ResourceInfo, RESOURCES};
use super::schema::{schema_name_of, schemas};
use k8s_openapi::api::{autoscaling::v1 as autoscaling, core::v1 as core};
use k8s_openapi::apimachinery::pkg::apis::meta::v1 as meta;

/// The JSON media type.
const JSON: &str = "application/json";
/// The protobuf media type kubectl asks `/openapi/v2` for.
const PROTOBUF_V2: &str = "application/com.github.proto-openapi.spec.v2@v1.0+protobuf";
/// The same, as kube-apiserver names it in its answers (and also accepts).
const PROTOBUF_V2_ANSWERED: &str = "application/com.github.proto-openapi.spec.v2.v1.0+protobuf";

/// A document that could not be built.
#[derive(Debug, thiserror::Error)]
pub enum OpenApiError {
    /// Serialization failed.
    #[error("serializing the OpenAPI document: {0}")]
    Json(#[from] serde_json::Error),
    /// The generated document has a value of the wrong shape.
    #[error("OpenAPI document, at {path}: {message}")]
    Invalid {
        /// JSON-pointer-like location.
        path: String,
        /// What is wrong there.
        message: String,
    },
}

/// A group, version and kind, as `x-kubernetes-group-version-kind` names one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Gvk {
    group: &'static str,
    version: &'static str,
    kind: &'static str,
}

impl Gvk {
    fn of(res: &ResourceInfo) -> Self {
        Gvk {
            group: res.group,
            version: res.version,
            kind: res.kind,
        }
    }

    fn json(&self) -> Value {
        json!({"group": self.group, "version": self.version, "kind": self.kind})
    }
}

/// Where a parameter goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum In {
    Path,
    Query,
}

/// A path or query parameter.
#[derive(Debug, Clone)]
struct Param {
    name: &'static str,
    location: In,
    /// `string`, `integer` or `boolean`.
    ty: &'static str,
    description: String,
}

impl Param {
    fn query(name: &'static str, ty: &'static str, description: &str) -> Self {
        Param {
            name,
            location: In::Query,
            ty,
            description: description.to_string(),
        }
    }
}

/// A request body.
#[derive(Debug, Clone)]
struct Body {
    /// Schema, with `#/definitions/` references.
    schema: Value,
    required: bool,
    /// Media types accepted.
    media: Vec<&'static str>,
}

/// One operation of one path.
#[derive(Debug, Clone)]
struct Op {
    /// `get`, `put`, `post`, `patch` or `delete`.
    method: &'static str,
    /// `x-kubernetes-action`.
    action: &'static str,
    id: String,
    description: String,
    tag: String,
    gvk: Option<Gvk>,
    params: Vec<Param>,
    body: Option<Body>,
    /// Status code and schema (with `#/definitions/` references).
    responses: Vec<(&'static str, Value)>,
    produces: Vec<&'static str>,
}

/// One path and its operations.
#[derive(Debug, Clone)]
struct PathSpec {
    /// `api/v1` or `apis/<group>/<version>`: which v3 document it belongs to.
    group_version: String,
    path: String,
    /// Parameters of every operation (`namespace`, `name`).
    params: Vec<Param>,
    ops: Vec<Op>,
}

/// A `$ref` to a definition.
fn reference(name: &str) -> Value {
    json!({"$ref": format!("#/definitions/{name}")})
}

/// `api/v1` or `apis/<group>/<version>`.
fn group_version_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

/// The group-version part of operation ids, as Kubernetes spells it: `CoreV1`, `AppsV1`,
/// `CoordinationV1` (".k8s.io" dropped), `KairnDevV1`.
fn id_prefix(group: &str, version: &str) -> String {
    let group = if group.is_empty() { "core" } else { group };
    let group = group.strip_suffix(".k8s.io").unwrap_or(group);
    let mut out: String = group.split(['.', '-']).map(capitalize).collect();
    out.push_str(&capitalize(version));
    out
}

/// The operation tag: `core_v1`, `apps_v1`, `kairnDev_v1`.
fn tag(group: &str, version: &str) -> String {
    let group = if group.is_empty() { "core" } else { group };
    let group = group.strip_suffix(".k8s.io").unwrap_or(group);
    let mut parts = group.split(['.', '-']);
    let mut out = parts.next().unwrap_or_default().to_string();
    out.extend(parts.map(capitalize));
    format!("{out}_{version}")
}

fn capitalize(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(c) => c.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// Kairn's own kinds behave like custom resources: like kube-apiserver for those, no
/// strategic merge patch is advertised, so kubectl sends merge patches.
fn is_builtin(res: &ResourceInfo) -> bool {
    res.group != crate::kinds::GROUP
}

/// The patch media types a kind's PATCH accepts (kept in step with the patch handler).
fn patch_types(res: &ResourceInfo) -> Vec<&'static str> {
    let mut types = vec!["application/json-patch+json", "application/merge-patch+json"];
    if is_builtin(res) {
        types.push("application/strategic-merge-patch+json");
    }
    types.push("application/apply-patch+yaml");
    types
}

/// The query parameters of a PATCH: those of every write, and `force` for apply.
fn patch_params() -> Vec<Param> {
    let mut params = write_params();
    params.push(Param::query(
        "force",
        "boolean",
        "Server-side apply only: take the fields other managers own instead of failing with a conflict.",
    ));
    params
}

/// The query parameters of writes, `fieldValidation` above all: kubectl reads it on each
/// PATCH operation to decide that the server validates fields (and skips its own check).
fn write_params() -> Vec<Param> {
    vec![
        Param::query(
            "dryRun",
            "string",
            "When present (`All`), the write is admitted and validated but not stored.",
        ),
        Param::query(
            "fieldManager",
            "string",
            "The name of the actor making the change, recorded with the fields it sets.",
        ),
        Param::query(
            "fieldValidation",
            "string",
            "What to do with fields the object's type does not know: `Ignore` drops them, `Warn` (the default) \
             drops them and sends one `Warning` header each, `Strict` rejects the request.",
        ),
    ]
}

fn list_params() -> Vec<Param> {
    vec![
        Param::query("allowWatchBookmarks", "boolean", "With `watch`: send BOOKMARK events."),
        Param::query(
            "continue",
            "string",
            "The token of the next page, from a previous list.",
        ),
        Param::query(
            "fieldSelector",
            "string",
            "Only objects whose fields match, e.g. `spec.nodeName=n1`.",
        ),
        Param::query(
            "labelSelector",
            "string",
            "Only objects whose labels match, e.g. `app=web,tier!=db`.",
        ),
        Param::query(
            "limit",
            "integer",
            "The most objects to return; the rest come with `continue`.",
        ),
        Param::query(
            "resourceVersion",
            "string",
            "With `watch`: the revision after which changes are sent.",
        ),
        Param::query(
            "timeoutSeconds",
            "integer",
            "With `watch`: end the watch after this long.",
        ),
        Param::query("watch", "boolean", "Stream changes as watch events instead of listing."),
    ]
}

fn path_param(name: &'static str, description: String) -> Param {
    Param {
        name,
        location: In::Path,
        ty: "string",
        description,
    }
}

fn ok(schema: Value) -> Vec<(&'static str, Value)> {
    vec![("200", schema)]
}

/// The paths and operations of one resource, as kube-apiserver lays them out.
fn resource_paths(res: &ResourceInfo, defs: &Definitions) -> Vec<PathSpec> {
    let gv = group_version_path(res.group, res.version);
    let prefix = format!("/{gv}");
    let id = id_prefix(res.group, res.version);
    let tag = tag(res.group, res.version);
    let kind = res.kind;
    let scope = if res.namespaced { "Namespaced" } else { "" };
    let root = reference(&defs.root(res));
    let list = reference(&defs.list(res));
    let gvk = Some(Gvk::of(res));
    let namespace = path_param("namespace", "The namespace of the objects.".into());
    let name = path_param("name", format!("The name of the {kind}."));
    let op = |method, action, verb: &str, what: &str, description: String| Op {
        method,
        action,
        id: format!("{verb}{id}{scope}{kind}{what}"),
        description,
        tag: tag.clone(),
        gvk,
        params: Vec::new(),
        body: None,
        responses: Vec::new(),
        produces: vec![JSON],
    };
    let list_op = |id_override: Option<String>| Op {
        params: list_params(),
        responses: ok(list.clone()),
        produces: vec![JSON, "application/json;stream=watch"],
        id: id_override.unwrap_or_else(|| format!("list{id}{scope}{kind}")),
        ..op(
            "get",
            "list",
            "list",
            "",
            format!("list or watch objects of kind {kind}"),
        )
    };
    let body = |schema: Value, media: Vec<&'static str>| {
        Some(Body {
            schema,
            required: true,
            media,
        })
    };

    let mut out = Vec::new();
    let (collection, collection_params) = if res.namespaced {
        // Across namespaces: list (and watch) only.
        out.push(PathSpec {
            group_version: gv.clone(),
            path: format!("{prefix}/{}", res.plural),
            params: Vec::new(),
            ops: vec![list_op(Some(format!("list{id}{kind}ForAllNamespaces")))],
        });
        (
            format!("{prefix}/namespaces/{{namespace}}/{}", res.plural),
            vec![namespace.clone()],
        )
    } else {
        (format!("{prefix}/{}", res.plural), Vec::new())
    };
    out.push(PathSpec {
        group_version: gv.clone(),
        path: collection.clone(),
        params: collection_params.clone(),
        ops: vec![
            list_op(None),
            Op {
                params: write_params(),
                body: body(root.clone(), vec![JSON]),
                responses: vec![("201", root.clone())],
                ..op("post", "post", "create", "", format!("create a {kind}"))
            },
        ],
    });
    let mut object_params = collection_params;
    object_params.insert(0, name.clone());
    let object = format!("{collection}/{{name}}");
    out.push(PathSpec {
        group_version: gv.clone(),
        path: object.clone(),
        params: object_params.clone(),
        ops: vec![
            Op {
                responses: ok(root.clone()),
                ..op("get", "get", "read", "", format!("read the specified {kind}"))
            },
            Op {
                params: write_params(),
                body: body(root.clone(), vec![JSON]),
                responses: ok(root.clone()),
                ..op("put", "put", "replace", "", format!("replace the specified {kind}"))
            },
            Op {
                params: patch_params(),
                body: body(reference(&defs.patch), patch_types(res)),
                responses: ok(root.clone()),
                ..op(
                    "patch",
                    "patch",
                    "patch",
                    "",
                    format!("partially update the specified {kind}"),
                )
            },
            Op {
                params: vec![write_params().remove(0)],
                body: Some(Body {
                    schema: reference(&defs.delete_options),
                    required: false,
                    media: vec![JSON],
                }),
                responses: ok(root.clone()),
                ..op("delete", "delete", "delete", "", format!("delete a {kind}"))
            },
        ],
    });
    for sub in res.subresources {
        let path = format!("{object}/{sub}");
        let ops = match *sub {
            "status" => {
                let what = "Status";
                vec![
                    Op {
                        responses: ok(root.clone()),
                        ..op(
                            "get",
                            "get",
                            "read",
                            what,
                            format!("read status of the specified {kind}"),
                        )
                    },
                    Op {
                        params: write_params(),
                        body: body(root.clone(), vec![JSON]),
                        responses: ok(root.clone()),
                        ..op(
                            "put",
                            "put",
                            "replace",
                            what,
                            format!("replace status of the specified {kind}"),
                        )
                    },
                    Op {
                        params: patch_params(),
                        body: body(reference(&defs.patch), patch_types(res)),
                        responses: ok(root.clone()),
                        ..op(
                            "patch",
                            "patch",
                            "patch",
                            what,
                            format!("partially update status of the specified {kind}"),
                        )
                    },
                ]
            }
            "scale" => {
                let scale = reference(&defs.scale);
                let scale_gvk = Some(Gvk {
                    group: "autoscaling",
                    version: "v1",
                    kind: "Scale",
                });
                vec![
                    Op {
                        gvk: scale_gvk,
                        responses: ok(scale.clone()),
                        ..op(
                            "get",
                            "get",
                            "read",
                            "Scale",
                            format!("read scale of the specified {kind}"),
                        )
                    },
                    Op {
                        gvk: scale_gvk,
                        params: write_params(),
                        body: body(scale.clone(), vec![JSON]),
                        responses: ok(scale.clone()),
                        ..op(
                            "put",
                            "put",
                            "replace",
                            "Scale",
                            format!("replace scale of the specified {kind}"),
                        )
                    },
                    Op {
                        gvk: scale_gvk,
                        params: patch_params(),
                        body: body(reference(&defs.patch), patch_types(res)),
                        responses: ok(scale),
                        ..op(
                            "patch",
                            "patch",
                            "patch",
                            "Scale",
                            format!("partially update scale of the specified {kind}"),
                        )
                    },
                ]
            }
            "binding" => vec![Op {
                gvk: Some(Gvk {
                    group: "",
                    version: "v1",
                    kind: "Binding",
                }),
                params: write_params(),
                body: body(reference(&defs.binding), vec![JSON]),
                responses: vec![("201", reference(&defs.status))],
                ..op(
                    "post",
                    "post",
                    "create",
                    "Binding",
                    format!("create binding of a {kind}"),
                )
            }],
            "log" => vec![Op {
                gvk: None,
                params: vec![
                    Param::query("container", "string", "The container whose log to read."),
                    Param::query("follow", "boolean", "Keep streaming the log as it grows."),
                    Param::query("limitBytes", "integer", "The most bytes of log to return."),
                    Param::query("tailLines", "integer", "Only this many lines from the end."),
                ],
                responses: ok(json!({"type": "string"})),
                produces: vec!["text/plain"],
                ..op("get", "get", "read", "Log", format!("read log of the specified {kind}"))
            }],
            // A subresource this module does not know yet: published without operations
            // rather than guessed.
            _ => continue,
        };
        out.push(PathSpec {
            group_version: gv.clone(),
            path,
            params: object_params.clone(),
            ops,
        });
    }
    out
}

/// Every path of every served resource.
fn paths(defs: &Definitions) -> Vec<PathSpec> {
    RESOURCES.iter().flat_map(|res| resource_paths(res, defs)).collect()
}

/// The definitions both documents draw from, with `#/definitions/` references.
struct Definitions {
    /// Definitions by name.
    schemas: BTreeMap<String, Value>,
    patch: String,
    delete_options: String,
    status: String,
    scale: String,
    binding: String,
}

impl Definitions {
    /// The served kinds' schemas, plus what the operations use besides them: a `<Kind>List`
    /// per kind, `Status`, `DeleteOptions`, `Patch`, and the `Scale` and `Binding` of the
    /// subresources.
    fn build() -> Self {
        let served = schemas();
        let mut schemas = served.definitions.clone();
        // The same settings as `schema::schemas`, so shared definitions come out alike.
        let mut settings = SchemaSettings::draft07();
        settings.transforms.clear();
        settings.meta_schema = None;
        let mut generator = SchemaGenerator::new(settings);
        let list_meta = schema_name_of::<meta::ListMeta>(&mut generator);
        let status = schema_name_of::<meta::Status>(&mut generator);
        let delete_options = schema_name_of::<meta::DeleteOptions>(&mut generator);
        let patch = schema_name_of::<meta::Patch>(&mut generator);
        let scale = schema_name_of::<autoscaling::Scale>(&mut generator);
        let binding = schema_name_of::<core::Binding>(&mut generator);
        for (name, def) in generator.take_definitions(false) {
            // The served kinds' own copies carry the list-merge extensions: keep those.
            schemas.entry(name).or_insert(def);
        }
        for (name, gvk) in [
            (&status, ("", "v1", "Status")),
            (&scale, ("autoscaling", "v1", "Scale")),
            (&binding, ("", "v1", "Binding")),
        ] {
            if let Some(def) = schemas.get_mut(name).and_then(Value::as_object_mut) {
                def.entry("x-kubernetes-group-version-kind")
                    .or_insert_with(|| json!([{"group": gvk.0, "version": gvk.1, "kind": gvk.2}]));
            }
        }
        let mut defs = Definitions {
            schemas,
            patch,
            delete_options,
            status,
            scale,
            binding,
        };
        for res in RESOURCES {
            // k8s-openapi's structs hold `metadata` outright, so their schemas require it;
            // Kubernetes' do not (kubectl explain would mark it `-required-`).
            if let Some(required) = defs
                .schemas
                .get_mut(&defs.root(res))
                .and_then(|d| d.get_mut("required"))
                .and_then(Value::as_array_mut)
            {
                required.retain(|f| f != "metadata");
            }
            let list = json!({
                "description": format!("{}List is a list of {} objects.", res.kind, res.kind),
                "type": "object",
                "required": ["items"],
                "properties": {
                    "apiVersion": {"description": "The version of the list's schema.", "type": "string"},
                    "items": {"description": format!("The {} objects.", res.kind), "type": "array", "items": reference(&defs.root(res))},
                    "kind": {"description": "The list's kind.", "type": "string"},
                    "metadata": {"description": "Standard list metadata.", "$ref": format!("#/definitions/{list_meta}")},
                },
                "x-kubernetes-group-version-kind": [{"group": res.group, "version": res.version, "kind": format!("{}List", res.kind)}],
            });
            defs.schemas.insert(defs.list(res), list);
        }
        defs
    }

    /// The definition name of a served kind.
    fn root(&self, res: &ResourceInfo) -> String {
        // Every served kind registers its schema (checked by schema.rs' tests); the fallback
        // only keeps a document buildable if that ever breaks.
        schemas()
            .root_name(res)
            .map(String::from)
            .unwrap_or_else(|| format!("{}.{}", res.api_version().replace('/', "."), res.kind))
    }

    /// The definition name of a kind's list.
    fn list(&self, res: &ResourceInfo) -> String {
        format!("{}List", self.root(res))
    }
}

/// An encoded document and its ETag.
struct Encoded {
    body: Bytes,
    /// Unquoted; also the `hash` of v3 URLs.
    etag: String,
}

impl Encoded {
    fn new(body: Vec<u8>) -> Self {
        let etag = etag(&body);
        Encoded {
            body: Bytes::from(body),
            etag,
        }
    }
}

/// A content hash: the documents change only with the binary, so a fixed-key SipHash
/// (128 bits from two seeds) identifies them well enough for caching.
fn etag(bytes: &[u8]) -> String {
    let half = |seed: u8| {
        let mut h = DefaultHasher::new();
        seed.hash(&mut h);
        bytes.hash(&mut h);
        h.finish()
    };
    format!("{:016X}{:016X}", half(0), half(1))
}

/// Every document, encoded.
struct Documents {
    v2_json: Encoded,
    v2_protobuf: Encoded,
    v3_index: Encoded,
    /// By `api/v1`, `apis/<group>/<version>`.
    v3: BTreeMap<String, Encoded>,
}

fn build() -> Result<Documents, OpenApiError> {
    let defs = Definitions::build();
    let paths = paths(&defs);
    let v2 = v2::document(&defs, &paths);
    let v2_protobuf = gnostic::document(&v2)?.encode_to_vec();
    let v3: BTreeMap<String, Encoded> = v3::documents(&defs, &paths)
        .into_iter()
        .map(|(gv, doc)| Ok((gv, Encoded::new(serde_json::to_vec(&doc)?))))
        .collect::<Result<_, OpenApiError>>()?;
    let index: serde_json::Map<String, Value> = v3
        .iter()
        .map(|(gv, doc)| (gv.clone(), json!({"serverRelativeURL": v3_url(gv, &doc.etag)})))
        .collect();
    Ok(Documents {
        v2_json: Encoded::new(serde_json::to_vec(&v2)?),
        v2_protobuf: Encoded::new(v2_protobuf),
        v3_index: Encoded::new(serde_json::to_vec(&json!({"paths": index}))?),
        v3,
    })
}

fn v3_url(gv: &str, hash: &str) -> String {
    format!("/openapi/v3/{gv}?hash={hash}")
}

/// The documents, built on first use (off the async threads: it takes a moment).
async fn documents() -> Result<&'static Documents, ApiError> {
    static DOCS: OnceLock<Result<Documents, OpenApiError>> = OnceLock::new();
    let built = match DOCS.get() {
        Some(docs) => docs,
        None => tokio::task::spawn_blocking(|| DOCS.get_or_init(build))
            .await
            .map_err(|e| ApiError::Internal(format!("building the OpenAPI documents: {e}")))?,
    };
    built.as_ref().map_err(|e| ApiError::Internal(e.to_string()))
}

/// `GET /openapi/v2`: JSON, or gnostic protobuf when asked for.
pub async fn serve_v2(headers: HeaderMap) -> Response {
    let docs = match documents().await {
        Ok(d) => d,
        Err(e) => return e.into_response(),
    };
    match negotiate(&headers, &[JSON, PROTOBUF_V2, PROTOBUF_V2_ANSWERED]) {
        Some(0) => answer(&headers, &docs.v2_json, JSON, None),
        Some(_) => answer(&headers, &docs.v2_protobuf, PROTOBUF_V2_ANSWERED, None),
        None => not_acceptable(),
    }
}

/// `GET /openapi/v3`: where each group-version's document is.
pub async fn serve_v3_index(headers: HeaderMap) -> Response {
    match documents().await {
        Ok(docs) => answer(&headers, &docs.v3_index, JSON, None),
        Err(e) => e.into_response(),
    }
}

/// `GET /openapi/v3/api/v1`, `/openapi/v3/apis/<group>/<version>`: JSON only.
pub async fn serve_v3(
    Path(group_version): Path<String>,
    Query(params): Query<BTreeMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let docs = match documents().await {
        Ok(d) => d,
        Err(e) => return e.into_response(),
    };
    let group_version = group_version.trim_matches('/');
    let Some(doc) = docs.v3.get(group_version) else {
        return ApiError::NotFound {
            kind: "openapi/v3".into(),
            name: group_version.to_string(),
        }
        .into_response();
    };
    if negotiate(&headers, &[JSON]).is_none() {
        return not_acceptable();
    }
    match params.get("hash") {
        // A stale link (the document changed): send the client to the current one.
        Some(hash) if *hash != doc.etag => {
            let mut resp = StatusCode::MOVED_PERMANENTLY.into_response();
            if let Ok(location) = HeaderValue::from_str(&v3_url(group_version, &doc.etag)) {
                resp.headers_mut().insert(header::LOCATION, location);
            }
            resp
        }
        // The URL names this exact content: it may be cached for good (a year, as
        // kube-apiserver's `Expires` says).
        Some(_) => answer(&headers, doc, JSON, Some("public, immutable, max-age=31536000")),
        None => answer(&headers, doc, JSON, None),
    }
}

fn not_acceptable() -> Response {
    let mut resp = StatusCode::NOT_ACCEPTABLE.into_response();
    resp.headers_mut()
        .insert(header::VARY, HeaderValue::from_static("Accept"));
    resp
}

/// The encoded document, or 304 when the client's copy is current.
fn answer(headers: &HeaderMap, doc: &Encoded, content_type: &'static str, cache: Option<&'static str>) -> Response {
    let etag = format!("\"{}\"", doc.etag);
    let current = headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().trim_start_matches("W/"))
        .any(|t| t == "*" || t == etag);
    let mut resp = if current {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        doc.body.clone().into_response()
    };
    let h = resp.headers_mut();
    if !current {
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    }
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    // One URL, several representations: caches must key on Accept too.
    h.insert(header::VARY, HeaderValue::from_static("Accept"));
    if let Some(cache) = cache {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    }
    resp
}

/// The index in `offers` of the media type to answer with, by the `Accept` header's
/// preferences (highest `q` first, then the more specific range); `None` if none fits.
fn negotiate(headers: &HeaderMap, offers: &[&str]) -> Option<usize> {
    let accept: Vec<&str> = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .collect();
    let accept = if accept.is_empty() { vec!["*/*"] } else { accept };
    let mut ranges: Vec<(f32, u8, &str, &str)> = Vec::new();
    for clause in accept {
        let mut parts = clause.split(';').map(str::trim);
        let range = parts.next().unwrap_or_default();
        let q = parts
            .filter_map(|p| p.strip_prefix("q="))
            .find_map(|q| q.parse::<f32>().ok())
            .unwrap_or(1.0);
        let (ty, sub) = range.split_once('/').unwrap_or((range, "*"));
        let specificity = u8::from(ty != "*") + u8::from(sub != "*");
        if q > 0.0 {
            ranges.push((q, specificity, ty, sub));
        }
    }
    // Stable: equal preferences keep the client's order.
    ranges.sort_by(|a, b| b.0.total_cmp(&a.0).then(b.1.cmp(&a.1)));
    ranges.iter().find_map(|(_, _, ty, sub)| {
        offers.iter().position(|offer| {
            let (oty, osub) = offer.split_once('/').unwrap_or((offer, ""));
            (*ty == "*" || ty.eq_ignore_ascii_case(oty)) && (*sub == "*" || sub.eq_ignore_ascii_case(osub))
        })
    })
}

#[cfg(test)]
mod tests;
