//! Six gate-style expressions over a recorded 4.7 KB Pod review: evaluated
//! over borrowed views of the parsed JSON (what genesis-gate does), and over
//! `cel::Value`s converted from it (the baseline that views replace).

use cel::objects::KeyRef;
use cel::{Context, Env, Program, Value};
use criterion::{criterion_group, criterion_main, Criterion};
use genesis_gate::expression::{Activation, Expression};
use serde_json::Value as Json;
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

const REVIEW: &str = include_str!("../tests/fixtures/admissionreviews/0010-Pod-CREATE.json");

/// Uses only cel's standard library, so that the baseline runs them too.
const GATE_EXPRESSIONS: [&str; 6] = [
    r#"object.spec.volumes.exists(v, has(v.persistentVolumeClaim) && v.persistentVolumeClaim.claimName == "data-pacific-fork-0")"#,
    r#"object.spec.containers.filter(c, c.name == "seid")[0].args.exists(a, a.startsWith("--halt-height"))"#,
    r#"request.userInfo.username.startsWith("system:serviceaccount:")"#,
    r#"has(object.metadata.ownerReferences) && object.metadata.ownerReferences.exists(r, r.controller == true && r.kind == "Job")"#,
    r#"has(object.metadata.labels) && object.metadata.labels["sei.io/component"] == "bootstrap""#,
    r#"request.operation == "CREATE" && object.kind == "Pod" && "sei.io/node" in object.metadata.labels"#,
];

fn parse() -> Json {
    serde_json::from_str(black_box(REVIEW)).expect("the recorded review is JSON")
}

fn evaluate_views(expressions: &[Expression], review: &Json, deadline: Option<Instant>) -> usize {
    let request = &review["request"];
    let mut activation = Activation::new();
    activation.bind_json("request", request);
    activation.bind_json("object", &request["object"]);
    if let Some(deadline) = deadline {
        activation.set_deadline(deadline);
    }
    let results = expressions.iter().map(|e| e.evaluate_bool(&activation));
    results.filter(|result| result == &Ok(true)).count()
}

/// Converts the request into a `cel::Value` and binds it, and its object.
fn bind_converted<'c>(env: &Arc<Env>, review: &Json) -> Context<'c, 'c> {
    let request = cel::to_value(&review["request"]).expect("JSON converts to a cel Value");
    let object = match &request {
        Value::Map(map) => map.get(&KeyRef::String("object")).cloned(),
        _ => None,
    };
    let mut context = Context::with_env(Arc::clone(env));
    context.add_variable_from_value("request", request);
    context.add_variable_from_value("object", object.unwrap_or(Value::Null));
    context
}

fn evaluate_converted(programs: &[Program], context: &Context) -> usize {
    let results = programs.iter().map(|p| p.execute(context));
    results
        .filter(|result| result == &Ok(Value::Bool(true)))
        .count()
}

fn views(c: &mut Criterion) {
    let compile = |source: &&str| Expression::compile(source).expect("the expression compiles");
    let expressions: Vec<Expression> = GATE_EXPRESSIONS.iter().map(compile).collect();
    let review = parse();
    assert_eq!(
        evaluate_views(&expressions, &review, None),
        3,
        "expressions that hold"
    );

    c.bench_function("parse review", |b| b.iter(parse));
    c.bench_function("views: parse, bind, evaluate 6", |b| {
        b.iter(|| evaluate_views(&expressions, &parse(), None))
    });
    c.bench_function("views: bind, evaluate 6", |b| {
        b.iter(|| evaluate_views(&expressions, &review, None))
    });
    c.bench_function("views: bind, evaluate 6 with a deadline", |b| {
        let deadline = Instant::now() + Duration::from_secs(3600);
        b.iter(|| evaluate_views(&expressions, &review, Some(deadline)))
    });
    for (index, expression) in expressions.iter().enumerate() {
        let request = &review["request"];
        let mut activation = Activation::new();
        activation.bind_json("request", request);
        activation.bind_json("object", &request["object"]);
        c.bench_function(&format!("views: expression {}", index + 1), |b| {
            b.iter(|| expression.evaluate_bool(&activation))
        });
    }
}

fn converted(c: &mut Criterion) {
    let env = Arc::new(Env::stdlib());
    let compile = |source: &&str| env.compile(source).expect("the expression compiles");
    let programs: Vec<Program> = GATE_EXPRESSIONS.iter().map(compile).collect();
    let review = parse();
    let context = bind_converted(&env, &review);
    assert_eq!(
        evaluate_converted(&programs, &context),
        3,
        "expressions that hold"
    );

    c.bench_function("converted: parse, convert, bind, evaluate 6", |b| {
        b.iter(|| evaluate_converted(&programs, &bind_converted(&env, &parse())))
    });
    c.bench_function("converted: convert, bind", |b| {
        b.iter(|| bind_converted(&env, &review))
    });
    c.bench_function("converted: evaluate 6", |b| {
        b.iter(|| evaluate_converted(&programs, &context))
    });
}

criterion_group!(benches, views, converted);
criterion_main!(benches);
