//! Which installed models a series goes to. The configuration's `[[routes]]` each name a model
//! and conditions on the series (Modality, Body Part Examined, Series Description, Image Type,
//! Slice Thickness, the calling AE); a series goes to every model one of whose routes it meets,
//! and a series that meets none is stored and left alone. Without `[[routes]]`,
//! `[inference] model` takes every series of its modality (the one-model appliance).

use pacs_bridge::volume::SeriesAttributes;
use regex::Regex;
use serde::{Deserialize, Serialize};

/// One `[[routes]]` entry as configured.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Installed model id the matching series go to.
    pub model: String,
    /// Modality, exactly (case does not matter).
    pub modality: Option<String>,
    /// Regular expression searched in Body Part Examined (`^...$` to match it whole, `(?i)`
    /// to ignore case).
    pub body_part: Option<String>,
    /// Regular expression searched in Series Description.
    pub series_description: Option<String>,
    /// Regular expression searched in Image Type's values joined by `\`
    /// (e.g. `^ORIGINAL\\PRIMARY`).
    pub image_type: Option<String>,
    /// Slice Thickness range, mm, both ends included; a series without one does not match.
    pub slice_thickness_mm: Option<[f64; 2]>,
    /// The AE title that sent the study, exactly.
    pub calling_ae: Option<String>,
}

/// A route with its expressions compiled.
#[derive(Debug, Clone)]
pub struct Route {
    pub config: RouteConfig,
    body_part: Option<Regex>,
    series_description: Option<Regex>,
    image_type: Option<Regex>,
}

/// Every problem of `routes`, by key (`routes[1].series_description`).
pub fn problems(routes: &[RouteConfig]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (i, route) in routes.iter().enumerate() {
        let key = |field: &str| format!("routes[{i}].{field}");
        if route.model.trim().is_empty() {
            out.push((key("model"), "must name an installed model".into()));
        }
        if route.modality.as_ref().is_some_and(|m| m.trim().is_empty()) {
            out.push((
                key("modality"),
                "must not be empty (leave it out to match any)".into(),
            ));
        }
        for (field, expression) in [
            ("body_part", &route.body_part),
            ("series_description", &route.series_description),
            ("image_type", &route.image_type),
        ] {
            if let Some(Err(e)) = expression.as_deref().map(compile) {
                out.push((key(field), e));
            }
        }
        if let Some([low, high]) = route.slice_thickness_mm {
            if !(low.is_finite() && high.is_finite() && 0.0 <= low && low <= high) {
                out.push((
                    key("slice_thickness_mm"),
                    format!("[{low}, {high}] is not a range of millimetres (0 <= low <= high)"),
                ));
            }
        }
        if route
            .calling_ae
            .as_ref()
            .is_some_and(|ae| ae.trim().is_empty())
        {
            out.push((key("calling_ae"), "must not be empty".into()));
        }
    }
    out
}

fn compile(expression: &str) -> Result<Regex, String> {
    regex::RegexBuilder::new(expression)
        .size_limit(1 << 20)
        .build()
        .map_err(|e| format!("not a regular expression: {e}"))
}

impl Route {
    /// Compile `config`; its problems are the ones [`problems`] reports.
    pub fn new(config: RouteConfig) -> Result<Route, String> {
        let build = |e: &Option<String>| e.as_deref().map(compile).transpose();
        Ok(Route {
            body_part: build(&config.body_part)?,
            series_description: build(&config.series_description)?,
            image_type: build(&config.image_type)?,
            config,
        })
    }

    /// Whether a series with `attributes`, sent by `calling_ae`, meets every condition.
    pub fn matches(&self, attributes: &SeriesAttributes, calling_ae: &str) -> bool {
        let c = &self.config;
        let found = |r: &Option<Regex>, value: &str| r.as_ref().is_none_or(|r| r.is_match(value));
        c.modality
            .as_ref()
            .is_none_or(|m| m.eq_ignore_ascii_case(&attributes.modality))
            && c.calling_ae.as_ref().is_none_or(|ae| ae == calling_ae)
            && found(&self.body_part, &attributes.body_part_examined)
            && found(&self.series_description, &attributes.series_description)
            && found(&self.image_type, &attributes.image_type.join("\\"))
            && c.slice_thickness_mm.is_none_or(|[low, high]| {
                attributes
                    .slice_thickness_mm
                    .is_some_and(|t| low <= t && t <= high)
            })
    }
}

/// The configured routes, compiled.
#[derive(Debug, Clone)]
pub struct Router {
    routes: Vec<Route>,
}

impl Router {
    /// The routes of the configuration, or the one route of `[inference] model` when there
    /// are none.
    pub fn new(routes: &[RouteConfig], default_model: &str) -> Result<Router, String> {
        let configs = if routes.is_empty() {
            vec![RouteConfig {
                model: default_model.to_string(),
                ..RouteConfig::default()
            }]
        } else {
            routes.to_vec()
        };
        Ok(Router {
            routes: configs
                .into_iter()
                .map(Route::new)
                .collect::<Result<_, _>>()?,
        })
    }

    /// Every model a route names, each once, in the order they first appear.
    pub fn models(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for r in &self.routes {
            if !out.contains(&r.config.model) {
                out.push(r.config.model.clone());
            }
        }
        out
    }

    /// The models a series goes to, each once.
    pub fn route(&self, attributes: &SeriesAttributes, calling_ae: &str) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for r in self
            .routes
            .iter()
            .filter(|r| r.matches(attributes, calling_ae))
        {
            if !out.contains(&r.config.model) {
                out.push(r.config.model.clone());
            }
        }
        out
    }

    pub fn routes(&self) -> impl Iterator<Item = &RouteConfig> {
        self.routes.iter().map(|r| &r.config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t1() -> SeriesAttributes {
        SeriesAttributes {
            modality: "MR".into(),
            body_part_examined: "BRAIN".into(),
            series_description: "T1 MPRAGE sag".into(),
            image_type: vec!["ORIGINAL".into(), "PRIMARY".into(), "M".into()],
            slice_thickness_mm: Some(1.0),
        }
    }

    fn route(f: impl Fn(&mut RouteConfig)) -> RouteConfig {
        let mut r = RouteConfig {
            model: "deepbet".into(),
            ..RouteConfig::default()
        };
        f(&mut r);
        r
    }

    #[test]
    fn a_series_meets_a_route_only_when_every_condition_holds() {
        let all = route(|r| {
            r.modality = Some("mr".into());
            r.body_part = Some("(?i)^(brain|head)$".into());
            r.series_description = Some("(?i)t1".into());
            r.image_type = Some("^ORIGINAL\\\\PRIMARY".into());
            r.slice_thickness_mm = Some([0.5, 1.5]);
            r.calling_ae = Some("PACS".into());
        });
        let route = Route::new(all).unwrap();
        assert!(route.matches(&t1(), "PACS"));
        assert!(!route.matches(&t1(), "OTHER"));
        for change in [
            |a: &mut SeriesAttributes| a.modality = "CT".into(),
            |a: &mut SeriesAttributes| a.body_part_examined = "KNEE".into(),
            |a: &mut SeriesAttributes| a.series_description = "FLAIR ax".into(),
            |a: &mut SeriesAttributes| a.image_type = vec!["DERIVED".into(), "SECONDARY".into()],
            |a: &mut SeriesAttributes| a.slice_thickness_mm = Some(3.0),
            |a: &mut SeriesAttributes| a.slice_thickness_mm = None,
        ] {
            let mut a = t1();
            change(&mut a);
            assert!(!route.matches(&a, "PACS"), "{a:?}");
        }
    }

    #[test]
    fn a_series_goes_to_every_matching_model_once_and_no_route_means_the_default_model() {
        let routes = vec![
            route(|r| r.modality = Some("MR".into())),
            route(|r| r.series_description = Some("T1".into())),
            RouteConfig {
                model: "head-ct-ich".into(),
                modality: Some("CT".into()),
                ..RouteConfig::default()
            },
        ];
        let router = Router::new(&routes, "unused").unwrap();
        assert_eq!(router.models(), ["deepbet", "head-ct-ich"]);
        assert_eq!(router.route(&t1(), "PACS"), ["deepbet"]);
        let mut us = t1();
        us.modality = "US".into();
        us.series_description = "abdomen".into();
        assert!(router.route(&us, "PACS").is_empty());
        let default = Router::new(&[], "head-ct-ich").unwrap();
        assert_eq!(default.route(&us, "PACS"), ["head-ct-ich"]);
    }

    #[test]
    fn problems_name_the_route_and_its_key() {
        let bad = vec![
            route(|r| r.series_description = Some("(unclosed".into())),
            route(|r| {
                r.model = " ".into();
                r.slice_thickness_mm = Some([2.0, 1.0]);
            }),
        ];
        let keys: Vec<String> = problems(&bad).into_iter().map(|(k, _)| k).collect();
        assert_eq!(
            keys,
            [
                "routes[0].series_description",
                "routes[1].model",
                "routes[1].slice_thickness_mm"
            ]
        );
    }
}
