//! The protobuf form of the Swagger 2.0 document: gnostic's `openapi.v2.Document`, which
//! kubectl and client-go ask `/openapi/v2` for (and only for).
//!
//! The messages below are the subset of gnostic's `OpenAPIv2.proto` the served document
//! uses, declared with prost's derive and gnostic's field numbers; fields left out are
//! simply never written. [`document`] converts the JSON document the way gnostic's
//! `ParseDocument` does, so a client decoding the bytes sees what it would see from
//! kube-apiserver.

use serde_json::{Map, Value};

use super::OpenApiError;

/// `openapi.v2.Document`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Document {
    /// `swagger`: always `2.0`.
    #[prost(string, tag = "1")]
    pub swagger: String,
    /// `info`.
    #[prost(message, optional, tag = "2")]
    pub info: Option<Info>,
    /// `consumes`.
    #[prost(string, repeated, tag = "6")]
    pub consumes: Vec<String>,
    /// `produces`.
    #[prost(string, repeated, tag = "7")]
    pub produces: Vec<String>,
    /// `paths`.
    #[prost(message, optional, tag = "8")]
    pub paths: Option<Paths>,
    /// `definitions`.
    #[prost(message, optional, tag = "9")]
    pub definitions: Option<Definitions>,
    /// `x-*` keys.
    #[prost(message, repeated, tag = "16")]
    pub vendor_extension: Vec<NamedAny>,
}

/// `openapi.v2.Info`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Info {
    /// `title`.
    #[prost(string, tag = "1")]
    pub title: String,
    /// `version`.
    #[prost(string, tag = "2")]
    pub version: String,
    /// `description`.
    #[prost(string, tag = "3")]
    pub description: String,
}

/// `openapi.v2.Paths`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Paths {
    /// One entry per path, in document order.
    #[prost(message, repeated, tag = "2")]
    pub path: Vec<NamedPathItem>,
}

/// `openapi.v2.NamedPathItem`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct NamedPathItem {
    /// The path, e.g. `/api/v1/namespaces/{namespace}/pods`.
    #[prost(string, tag = "1")]
    pub name: String,
    /// Its operations.
    #[prost(message, optional, tag = "2")]
    pub value: Option<PathItem>,
}

/// `openapi.v2.PathItem`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PathItem {
    /// `get`.
    #[prost(message, optional, tag = "2")]
    pub get: Option<Operation>,
    /// `put`.
    #[prost(message, optional, tag = "3")]
    pub put: Option<Operation>,
    /// `post`.
    #[prost(message, optional, tag = "4")]
    pub post: Option<Operation>,
    /// `delete`.
    #[prost(message, optional, tag = "5")]
    pub delete: Option<Operation>,
    /// `patch`.
    #[prost(message, optional, tag = "8")]
    pub patch: Option<Operation>,
    /// Parameters shared by the path's operations.
    #[prost(message, repeated, tag = "9")]
    pub parameters: Vec<ParametersItem>,
    /// `x-*` keys.
    #[prost(message, repeated, tag = "10")]
    pub vendor_extension: Vec<NamedAny>,
}

/// `openapi.v2.Operation`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Operation {
    /// `tags`.
    #[prost(string, repeated, tag = "1")]
    pub tags: Vec<String>,
    /// `summary`.
    #[prost(string, tag = "2")]
    pub summary: String,
    /// `description`.
    #[prost(string, tag = "3")]
    pub description: String,
    /// `operationId`.
    #[prost(string, tag = "5")]
    pub operation_id: String,
    /// `produces`.
    #[prost(string, repeated, tag = "6")]
    pub produces: Vec<String>,
    /// `consumes`.
    #[prost(string, repeated, tag = "7")]
    pub consumes: Vec<String>,
    /// `parameters`.
    #[prost(message, repeated, tag = "8")]
    pub parameters: Vec<ParametersItem>,
    /// `responses`.
    #[prost(message, optional, tag = "9")]
    pub responses: Option<Responses>,
    /// `schemes`.
    #[prost(string, repeated, tag = "10")]
    pub schemes: Vec<String>,
    /// `deprecated`.
    #[prost(bool, tag = "11")]
    pub deprecated: bool,
    /// `x-*` keys (`x-kubernetes-action`, `x-kubernetes-group-version-kind`).
    #[prost(message, repeated, tag = "13")]
    pub vendor_extension: Vec<NamedAny>,
}

/// `openapi.v2.ParametersItem`: a parameter or a `$ref` to one.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ParametersItem {
    /// Which of the two.
    #[prost(oneof = "parameters_item::Oneof", tags = "1, 2")]
    pub oneof: Option<parameters_item::Oneof>,
}

/// The choice of [`ParametersItem`].
pub mod parameters_item {
    /// `oneof oneof`.
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Oneof {
        /// An inline parameter.
        #[prost(message, tag = "1")]
        Parameter(super::Parameter),
        /// A `$ref`.
        #[prost(message, tag = "2")]
        JsonReference(super::JsonReference),
    }
}

/// `openapi.v2.Parameter`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Parameter {
    /// Body or not.
    #[prost(oneof = "parameter::Oneof", tags = "1, 2")]
    pub oneof: Option<parameter::Oneof>,
}

/// The choice of [`Parameter`].
pub mod parameter {
    /// `oneof oneof`.
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Oneof {
        /// `in: body`.
        #[prost(message, tag = "1")]
        BodyParameter(Box<super::BodyParameter>),
        /// Any other location.
        #[prost(message, tag = "2")]
        NonBodyParameter(super::NonBodyParameter),
    }
}

/// `openapi.v2.BodyParameter`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct BodyParameter {
    /// `description`.
    #[prost(string, tag = "1")]
    pub description: String,
    /// `name`.
    #[prost(string, tag = "2")]
    pub name: String,
    /// `in`: `body`.
    #[prost(string, tag = "3")]
    pub r#in: String,
    /// `required`.
    #[prost(bool, tag = "4")]
    pub required: bool,
    /// `schema`.
    #[prost(message, optional, tag = "5")]
    pub schema: Option<Schema>,
    /// `x-*` keys.
    #[prost(message, repeated, tag = "6")]
    pub vendor_extension: Vec<NamedAny>,
}

/// `openapi.v2.NonBodyParameter`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct NonBodyParameter {
    /// By location.
    #[prost(oneof = "non_body_parameter::Oneof", tags = "3, 4")]
    pub oneof: Option<non_body_parameter::Oneof>,
}

/// The choice of [`NonBodyParameter`] (header and form parameters are not served).
pub mod non_body_parameter {
    /// `oneof oneof`.
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Oneof {
        /// `in: query`.
        #[prost(message, tag = "3")]
        QueryParameterSubSchema(super::SimpleParameter),
        /// `in: path`.
        #[prost(message, tag = "4")]
        PathParameterSubSchema(super::PathParameter),
    }
}

/// `openapi.v2.QueryParameterSubSchema`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SimpleParameter {
    /// `required`.
    #[prost(bool, tag = "1")]
    pub required: bool,
    /// `in`.
    #[prost(string, tag = "2")]
    pub r#in: String,
    /// `description`.
    #[prost(string, tag = "3")]
    pub description: String,
    /// `name`.
    #[prost(string, tag = "4")]
    pub name: String,
    /// `type`.
    #[prost(string, tag = "6")]
    pub r#type: String,
    /// `format`.
    #[prost(string, tag = "7")]
    pub format: String,
    /// `uniqueItems`.
    #[prost(bool, tag = "20")]
    pub unique_items: bool,
    /// `enum`.
    #[prost(message, repeated, tag = "21")]
    pub r#enum: Vec<Any>,
    /// `x-*` keys.
    #[prost(message, repeated, tag = "23")]
    pub vendor_extension: Vec<NamedAny>,
}

/// `openapi.v2.PathParameterSubSchema` (its numbering differs from the query one's).
#[derive(Clone, PartialEq, prost::Message)]
pub struct PathParameter {
    /// `required`.
    #[prost(bool, tag = "1")]
    pub required: bool,
    /// `in`.
    #[prost(string, tag = "2")]
    pub r#in: String,
    /// `description`.
    #[prost(string, tag = "3")]
    pub description: String,
    /// `name`.
    #[prost(string, tag = "4")]
    pub name: String,
    /// `type`.
    #[prost(string, tag = "5")]
    pub r#type: String,
    /// `format`.
    #[prost(string, tag = "6")]
    pub format: String,
    /// `uniqueItems`.
    #[prost(bool, tag = "19")]
    pub unique_items: bool,
    /// `enum`.
    #[prost(message, repeated, tag = "20")]
    pub r#enum: Vec<Any>,
    /// `x-*` keys.
    #[prost(message, repeated, tag = "22")]
    pub vendor_extension: Vec<NamedAny>,
}

/// `openapi.v2.JsonReference`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct JsonReference {
    /// `$ref`.
    #[prost(string, tag = "1")]
    pub r#ref: String,
    /// `description`.
    #[prost(string, tag = "2")]
    pub description: String,
}

/// `openapi.v2.Responses`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Responses {
    /// By status code.
    #[prost(message, repeated, tag = "1")]
    pub response_code: Vec<NamedResponseValue>,
    /// `x-*` keys.
    #[prost(message, repeated, tag = "2")]
    pub vendor_extension: Vec<NamedAny>,
}

/// `openapi.v2.NamedResponseValue`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct NamedResponseValue {
    /// The status code, e.g. `200`.
    #[prost(string, tag = "1")]
    pub name: String,
    /// The response.
    #[prost(message, optional, tag = "2")]
    pub value: Option<ResponseValue>,
}

/// `openapi.v2.ResponseValue`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ResponseValue {
    /// A response or a `$ref` to one.
    #[prost(oneof = "response_value::Oneof", tags = "1, 2")]
    pub oneof: Option<response_value::Oneof>,
}

/// The choice of [`ResponseValue`].
pub mod response_value {
    /// `oneof oneof`.
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Oneof {
        /// An inline response.
        #[prost(message, tag = "1")]
        Response(Box<super::Response>),
        /// A `$ref`.
        #[prost(message, tag = "2")]
        JsonReference(super::JsonReference),
    }
}

/// `openapi.v2.Response`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Response {
    /// `description`.
    #[prost(string, tag = "1")]
    pub description: String,
    /// `schema`.
    #[prost(message, optional, tag = "2")]
    pub schema: Option<SchemaItem>,
    /// `x-*` keys.
    #[prost(message, repeated, tag = "5")]
    pub vendor_extension: Vec<NamedAny>,
}

/// `openapi.v2.SchemaItem`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SchemaItem {
    /// Always a schema here (no file responses).
    #[prost(oneof = "schema_item::Oneof", tags = "1")]
    pub oneof: Option<schema_item::Oneof>,
}

/// The choice of [`SchemaItem`].
pub mod schema_item {
    /// `oneof oneof`.
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Oneof {
        /// A schema.
        #[prost(message, tag = "1")]
        Schema(Box<super::Schema>),
    }
}

/// `openapi.v2.Definitions`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Definitions {
    /// One entry per definition.
    #[prost(message, repeated, tag = "1")]
    pub additional_properties: Vec<NamedSchema>,
}

/// `openapi.v2.NamedSchema`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct NamedSchema {
    /// Definition or property name.
    #[prost(string, tag = "1")]
    pub name: String,
    /// Its schema.
    #[prost(message, optional, tag = "2")]
    pub value: Option<Schema>,
}

/// `openapi.v2.Schema`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Schema {
    /// `$ref`.
    #[prost(string, tag = "1")]
    pub r#ref: String,
    /// `format`.
    #[prost(string, tag = "2")]
    pub format: String,
    /// `title`.
    #[prost(string, tag = "3")]
    pub title: String,
    /// `description`.
    #[prost(string, tag = "4")]
    pub description: String,
    /// `default`.
    #[prost(message, optional, tag = "5")]
    pub default: Option<Any>,
    /// `multipleOf`.
    #[prost(double, tag = "6")]
    pub multiple_of: f64,
    /// `maximum`.
    #[prost(double, tag = "7")]
    pub maximum: f64,
    /// `exclusiveMaximum`.
    #[prost(bool, tag = "8")]
    pub exclusive_maximum: bool,
    /// `minimum`.
    #[prost(double, tag = "9")]
    pub minimum: f64,
    /// `exclusiveMinimum`.
    #[prost(bool, tag = "10")]
    pub exclusive_minimum: bool,
    /// `maxLength`.
    #[prost(int64, tag = "11")]
    pub max_length: i64,
    /// `minLength`.
    #[prost(int64, tag = "12")]
    pub min_length: i64,
    /// `pattern`.
    #[prost(string, tag = "13")]
    pub pattern: String,
    /// `maxItems`.
    #[prost(int64, tag = "14")]
    pub max_items: i64,
    /// `minItems`.
    #[prost(int64, tag = "15")]
    pub min_items: i64,
    /// `uniqueItems`.
    #[prost(bool, tag = "16")]
    pub unique_items: bool,
    /// `maxProperties`.
    #[prost(int64, tag = "17")]
    pub max_properties: i64,
    /// `minProperties`.
    #[prost(int64, tag = "18")]
    pub min_properties: i64,
    /// `required`.
    #[prost(string, repeated, tag = "19")]
    pub required: Vec<String>,
    /// `enum`.
    #[prost(message, repeated, tag = "20")]
    pub r#enum: Vec<Any>,
    /// `additionalProperties`.
    #[prost(message, optional, tag = "21")]
    pub additional_properties: Option<AdditionalPropertiesItem>,
    /// `type`.
    #[prost(message, optional, tag = "22")]
    pub r#type: Option<TypeItem>,
    /// `items`.
    #[prost(message, optional, tag = "23")]
    pub items: Option<ItemsItem>,
    /// `allOf`.
    #[prost(message, repeated, tag = "24")]
    pub all_of: Vec<Schema>,
    /// `properties`.
    #[prost(message, optional, tag = "25")]
    pub properties: Option<Properties>,
    /// `discriminator`.
    #[prost(string, tag = "26")]
    pub discriminator: String,
    /// `readOnly`.
    #[prost(bool, tag = "27")]
    pub read_only: bool,
    /// `example`.
    #[prost(message, optional, tag = "30")]
    pub example: Option<Any>,
    /// `x-*` keys.
    #[prost(message, repeated, tag = "31")]
    pub vendor_extension: Vec<NamedAny>,
}

/// `openapi.v2.Properties`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Properties {
    /// One entry per property.
    #[prost(message, repeated, tag = "1")]
    pub additional_properties: Vec<NamedSchema>,
}

/// `openapi.v2.AdditionalPropertiesItem`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct AdditionalPropertiesItem {
    /// A schema or a boolean.
    #[prost(oneof = "additional_properties_item::Oneof", tags = "1, 2")]
    pub oneof: Option<additional_properties_item::Oneof>,
}

/// The choice of [`AdditionalPropertiesItem`].
pub mod additional_properties_item {
    /// `oneof oneof`.
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Oneof {
        /// The values' schema.
        #[prost(message, tag = "1")]
        Schema(Box<super::Schema>),
        /// `true` or `false`.
        #[prost(bool, tag = "2")]
        Boolean(bool),
    }
}

/// `openapi.v2.TypeItem`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TypeItem {
    /// The type names.
    #[prost(string, repeated, tag = "1")]
    pub value: Vec<String>,
}

/// `openapi.v2.ItemsItem`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ItemsItem {
    /// The items' schema (one, in every document served here).
    #[prost(message, repeated, tag = "1")]
    pub schema: Vec<Schema>,
}

/// `openapi.v2.Any`: a JSON value carried as YAML text.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Any {
    /// The value as YAML.
    #[prost(string, tag = "2")]
    pub yaml: String,
}

/// `openapi.v2.NamedAny`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct NamedAny {
    /// The key, e.g. `x-kubernetes-group-version-kind`.
    #[prost(string, tag = "1")]
    pub name: String,
    /// The value.
    #[prost(message, optional, tag = "2")]
    pub value: Option<Any>,
}

/// Converts the Swagger 2.0 JSON document to gnostic's message.
pub fn document(doc: &Value) -> Result<Document, OpenApiError> {
    let at = Path::root();
    let obj = object(doc, &at)?;
    let mut out = Document {
        swagger: string(obj, "swagger", &at)?,
        consumes: strings(obj, "consumes", &at)?,
        produces: strings(obj, "produces", &at)?,
        vendor_extension: extensions(obj),
        ..Default::default()
    };
    if let Some(info) = obj.get("info") {
        let at = at.join("info");
        let info = object(info, &at)?;
        out.info = Some(Info {
            title: string(info, "title", &at)?,
            version: string(info, "version", &at)?,
            description: string(info, "description", &at)?,
        });
    }
    if let Some(paths) = obj.get("paths") {
        let at = at.join("paths");
        let mut path = Vec::new();
        for (name, item) in object(paths, &at)? {
            path.push(NamedPathItem {
                name: name.clone(),
                value: Some(path_item(item, &at.join(name))?),
            });
        }
        out.paths = Some(Paths { path });
    }
    if let Some(defs) = obj.get("definitions") {
        let at = at.join("definitions");
        out.definitions = Some(Definitions {
            additional_properties: named_schemas(defs, &at)?,
        });
    }
    Ok(out)
}

/// Where in the document a value sits, for error messages.
#[derive(Clone)]
struct Path(String);

impl Path {
    fn root() -> Self {
        Path(String::new())
    }

    fn join(&self, key: &str) -> Self {
        Path(format!("{}/{key}", self.0))
    }

    fn error(&self, message: impl Into<String>) -> OpenApiError {
        OpenApiError::Invalid {
            path: if self.0.is_empty() { "/".into() } else { self.0.clone() },
            message: message.into(),
        }
    }
}

fn object<'a>(value: &'a Value, at: &Path) -> Result<&'a Map<String, Value>, OpenApiError> {
    value.as_object().ok_or_else(|| at.error("expected an object"))
}

fn string(obj: &Map<String, Value>, key: &str, at: &Path) -> Result<String, OpenApiError> {
    match obj.get(key) {
        None => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(at.join(key).error("expected a string")),
    }
}

fn strings(obj: &Map<String, Value>, key: &str, at: &Path) -> Result<Vec<String>, OpenApiError> {
    match obj.get(key) {
        None => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|i| {
                i.as_str()
                    .map(String::from)
                    .ok_or_else(|| at.join(key).error("expected strings"))
            })
            .collect(),
        Some(_) => Err(at.join(key).error("expected an array of strings")),
    }
}

fn boolean(obj: &Map<String, Value>, key: &str, at: &Path) -> Result<bool, OpenApiError> {
    match obj.get(key) {
        None => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(at.join(key).error("expected a boolean")),
    }
}

fn number(obj: &Map<String, Value>, key: &str, at: &Path) -> Result<f64, OpenApiError> {
    match obj.get(key) {
        None => Ok(0.0),
        Some(v) => v.as_f64().ok_or_else(|| at.join(key).error("expected a number")),
    }
}

fn integer(obj: &Map<String, Value>, key: &str, at: &Path) -> Result<i64, OpenApiError> {
    match obj.get(key) {
        None => Ok(0),
        Some(v) => v.as_i64().ok_or_else(|| at.join(key).error("expected an integer")),
    }
}

/// A JSON value as gnostic's `Any`. Gnostic writes YAML; JSON text is YAML too (flow
/// style, every string quoted), and that is how clients read it back.
fn any(value: &Value) -> Any {
    Any {
        yaml: value.to_string(),
    }
}

fn anys(obj: &Map<String, Value>, key: &str, at: &Path) -> Result<Vec<Any>, OpenApiError> {
    match obj.get(key) {
        None => Ok(Vec::new()),
        Some(Value::Array(items)) => Ok(items.iter().map(any).collect()),
        Some(_) => Err(at.join(key).error("expected an array")),
    }
}

/// The `x-*` keys of an object, which gnostic keeps as vendor extensions.
fn extensions(obj: &Map<String, Value>) -> Vec<NamedAny> {
    obj.iter()
        .filter(|(k, _)| k.starts_with("x-"))
        .map(|(k, v)| NamedAny {
            name: k.clone(),
            value: Some(any(v)),
        })
        .collect()
}

fn path_item(value: &Value, at: &Path) -> Result<PathItem, OpenApiError> {
    let obj = object(value, at)?;
    let op = |method: &str| -> Result<Option<Operation>, OpenApiError> {
        obj.get(method).map(|o| operation(o, &at.join(method))).transpose()
    };
    Ok(PathItem {
        get: op("get")?,
        put: op("put")?,
        post: op("post")?,
        delete: op("delete")?,
        patch: op("patch")?,
        parameters: parameters(obj, at)?,
        vendor_extension: extensions(obj),
    })
}

fn operation(value: &Value, at: &Path) -> Result<Operation, OpenApiError> {
    let obj = object(value, at)?;
    let responses = match obj.get("responses") {
        None => None,
        Some(r) => {
            let at = at.join("responses");
            let mut codes = Vec::new();
            for (code, resp) in object(r, &at)?.iter().filter(|(k, _)| !k.starts_with("x-")) {
                codes.push(NamedResponseValue {
                    name: code.clone(),
                    value: Some(response(resp, &at.join(code))?),
                });
            }
            Some(Responses {
                response_code: codes,
                vendor_extension: extensions(object(r, &at)?),
            })
        }
    };
    Ok(Operation {
        tags: strings(obj, "tags", at)?,
        summary: string(obj, "summary", at)?,
        description: string(obj, "description", at)?,
        operation_id: string(obj, "operationId", at)?,
        produces: strings(obj, "produces", at)?,
        consumes: strings(obj, "consumes", at)?,
        parameters: parameters(obj, at)?,
        responses,
        schemes: strings(obj, "schemes", at)?,
        deprecated: boolean(obj, "deprecated", at)?,
        vendor_extension: extensions(obj),
    })
}

fn response(value: &Value, at: &Path) -> Result<ResponseValue, OpenApiError> {
    let obj = object(value, at)?;
    if let Some(Value::String(r)) = obj.get("$ref") {
        return Ok(ResponseValue {
            oneof: Some(response_value::Oneof::JsonReference(JsonReference {
                r#ref: r.clone(),
                description: String::new(),
            })),
        });
    }
    let schema = obj
        .get("schema")
        .map(|s| schema(s, &at.join("schema")))
        .transpose()?
        .map(|s| SchemaItem {
            oneof: Some(schema_item::Oneof::Schema(Box::new(s))),
        });
    Ok(ResponseValue {
        oneof: Some(response_value::Oneof::Response(Box::new(Response {
            description: string(obj, "description", at)?,
            schema,
            vendor_extension: extensions(obj),
        }))),
    })
}

fn parameters(obj: &Map<String, Value>, at: &Path) -> Result<Vec<ParametersItem>, OpenApiError> {
    let Some(list) = obj.get("parameters") else {
        return Ok(Vec::new());
    };
    let at = at.join("parameters");
    let list = list.as_array().ok_or_else(|| at.error("expected an array"))?;
    list.iter()
        .enumerate()
        .map(|(i, p)| parameter(p, &at.join(&i.to_string())))
        .collect()
}

fn parameter(value: &Value, at: &Path) -> Result<ParametersItem, OpenApiError> {
    use parameter::Oneof as P;
    let obj = object(value, at)?;
    if let Some(Value::String(r)) = obj.get("$ref") {
        return Ok(ParametersItem {
            oneof: Some(parameters_item::Oneof::JsonReference(JsonReference {
                r#ref: r.clone(),
                description: string(obj, "description", at)?,
            })),
        });
    }
    let location = string(obj, "in", at)?;
    let param = match location.as_str() {
        "body" => P::BodyParameter(Box::new(BodyParameter {
            description: string(obj, "description", at)?,
            name: string(obj, "name", at)?,
            r#in: location.clone(),
            required: boolean(obj, "required", at)?,
            schema: obj.get("schema").map(|s| schema(s, &at.join("schema"))).transpose()?,
            vendor_extension: extensions(obj),
        })),
        "query" => P::NonBodyParameter(NonBodyParameter {
            oneof: Some(non_body_parameter::Oneof::QueryParameterSubSchema(SimpleParameter {
                required: boolean(obj, "required", at)?,
                r#in: location.clone(),
                description: string(obj, "description", at)?,
                name: string(obj, "name", at)?,
                r#type: string(obj, "type", at)?,
                format: string(obj, "format", at)?,
                unique_items: boolean(obj, "uniqueItems", at)?,
                r#enum: anys(obj, "enum", at)?,
                vendor_extension: extensions(obj),
            })),
        }),
        "path" => P::NonBodyParameter(NonBodyParameter {
            oneof: Some(non_body_parameter::Oneof::PathParameterSubSchema(PathParameter {
                required: boolean(obj, "required", at)?,
                r#in: location.clone(),
                description: string(obj, "description", at)?,
                name: string(obj, "name", at)?,
                r#type: string(obj, "type", at)?,
                format: string(obj, "format", at)?,
                unique_items: boolean(obj, "uniqueItems", at)?,
                r#enum: anys(obj, "enum", at)?,
                vendor_extension: extensions(obj),
            })),
        }),
        other => {
            return Err(at
                .join("in")
                .error(format!("parameters in {other:?} are not supported")))
        }
    };
    Ok(ParametersItem {
        oneof: Some(parameters_item::Oneof::Parameter(Parameter { oneof: Some(param) })),
    })
}

fn named_schemas(value: &Value, at: &Path) -> Result<Vec<NamedSchema>, OpenApiError> {
    object(value, at)?
        .iter()
        .map(|(name, s)| {
            Ok(NamedSchema {
                name: name.clone(),
                value: Some(schema(s, &at.join(name))?),
            })
        })
        .collect()
}

fn schema(value: &Value, at: &Path) -> Result<Schema, OpenApiError> {
    let obj = object(value, at)?;
    let types = match obj.get("type") {
        None => None,
        Some(Value::String(t)) => Some(TypeItem { value: vec![t.clone()] }),
        Some(Value::Array(_)) => Some(TypeItem {
            value: strings(obj, "type", at)?,
        }),
        Some(_) => return Err(at.join("type").error("expected a string or an array")),
    };
    let items = match obj.get("items") {
        None => None,
        Some(Value::Array(list)) => Some(ItemsItem {
            schema: list
                .iter()
                .enumerate()
                .map(|(i, s)| schema(s, &at.join("items").join(&i.to_string())))
                .collect::<Result<_, _>>()?,
        }),
        Some(s) => Some(ItemsItem {
            schema: vec![schema(s, &at.join("items"))?],
        }),
    };
    let additional_properties = match obj.get("additionalProperties") {
        None => None,
        Some(Value::Bool(b)) => Some(additional_properties_item::Oneof::Boolean(*b)),
        Some(s) => Some(additional_properties_item::Oneof::Schema(Box::new(schema(
            s,
            &at.join("additionalProperties"),
        )?))),
    }
    .map(|oneof| AdditionalPropertiesItem { oneof: Some(oneof) });
    let all_of = match obj.get("allOf") {
        None => Vec::new(),
        Some(Value::Array(list)) => list
            .iter()
            .enumerate()
            .map(|(i, s)| schema(s, &at.join("allOf").join(&i.to_string())))
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(at.join("allOf").error("expected an array")),
    };
    let properties = obj
        .get("properties")
        .map(|p| named_schemas(p, &at.join("properties")))
        .transpose()?
        .map(|additional_properties| Properties { additional_properties });
    Ok(Schema {
        r#ref: string(obj, "$ref", at)?,
        format: string(obj, "format", at)?,
        title: string(obj, "title", at)?,
        description: string(obj, "description", at)?,
        default: obj.get("default").map(any),
        multiple_of: number(obj, "multipleOf", at)?,
        maximum: number(obj, "maximum", at)?,
        exclusive_maximum: boolean(obj, "exclusiveMaximum", at)?,
        minimum: number(obj, "minimum", at)?,
        exclusive_minimum: boolean(obj, "exclusiveMinimum", at)?,
        max_length: integer(obj, "maxLength", at)?,
        min_length: integer(obj, "minLength", at)?,
        pattern: string(obj, "pattern", at)?,
        max_items: integer(obj, "maxItems", at)?,
        min_items: integer(obj, "minItems", at)?,
        unique_items: boolean(obj, "uniqueItems", at)?,
        max_properties: integer(obj, "maxProperties", at)?,
        min_properties: integer(obj, "minProperties", at)?,
        required: strings(obj, "required", at)?,
        r#enum: anys(obj, "enum", at)?,
        additional_properties,
        r#type: types,
        items,
        all_of,
        properties,
        discriminator: string(obj, "discriminator", at)?,
        read_only: boolean(obj, "readOnly", at)?,
        example: obj.get("example").map(any),
        vendor_extension: extensions(obj),
    })
}
