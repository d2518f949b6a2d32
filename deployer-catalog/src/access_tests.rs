//! The access matrix through the API: a role × where it is granted × action table, and an
//! exhaustive check over every grant of one user on a small catalog that whoever may act on
//! an object may also see it (and that `show` lists exactly what they may see).

use std::collections::BTreeSet;

use crate::*;

fn slug(s: &str) -> Slug {
    Slug::new(s).unwrap()
}

fn dep(s: &str) -> DeploymentRef {
    s.parse().unwrap()
}

/// Where a role is granted to the user `u`.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Grant {
    /// `users` of project shop.
    ProjectRole,
    /// `users` of group shop/web.
    GroupOverride,
    /// `users` of deployment shop/prod.
    DeploymentOverride,
    /// One of the catalog's `admins`, with the role as project role.
    CatalogAdmin,
    /// The owner of project shop, with the role as project role.
    Owner,
}

/// A small catalog: project shop (owner olga) with group web (prod, subscribed to the
/// project's image shop-app/app, and staging) and group db (main); a shared repository tools.
/// `u` gets `role` where `grant` says (`None`: no role; catalog admin and owner still apply).
fn small_catalog(
    project: Option<Role>,
    web: Option<Role>,
    prod: Option<Role>,
    main: Option<Role>,
    owner: bool,
    admin: bool,
) -> CatalogData {
    let users = |r: Option<Role>| match r {
        Some(r) => format!("[{{user: u, role: {r}}}]"),
        None => "[]".to_string(),
    };
    let yaml = format!(
        r#"
admins: [{admins}]
repositories:
  - slug: shop-app
    url: https://git.example.com/shop/app.git
    project: shop
    images: [{{slug: app, name: registry.example.com/shop/app, versions: ["1.0.0"]}}]
  - slug: tools
    url: https://git.example.com/tools.git
    images: [{{slug: cli, name: registry.example.com/tools/cli, versions: ["1.0.0"]}}]
projects:
  - slug: shop
    owner: {owner}
    users: {project}
    groups:
      - slug: web
        group_type: odoo
        users: {web}
        defaults:
          image: {{repository: shop-app, image: app}}
          books: {{deploy: deploy}}
        deployments:
          - slug: prod
            settings: {{subscribe_image: true}}
            users: {prod}
          - slug: staging
      - slug: db
        group_type: pgo
        defaults: {{books: {{deploy: deploy-db}}}}
        deployments:
          - slug: main
            users: {main}
"#,
        admins = if admin { "root, u" } else { "root" },
        owner = if owner { "u" } else { "olga" },
        project = users(project),
        web = users(web),
        prod = users(prod),
        main = users(main),
    );
    CatalogData::from_yaml_str(&yaml, "small.yaml").unwrap()
}

fn catalog_for(role: Option<Role>, grant: Grant) -> CatalogData {
    match grant {
        Grant::ProjectRole => small_catalog(role, None, None, None, false, false),
        Grant::GroupOverride => small_catalog(None, role, None, None, false, false),
        Grant::DeploymentOverride => small_catalog(None, None, role, None, false, false),
        Grant::CatalogAdmin => small_catalog(role, None, None, None, false, true),
        Grant::Owner => small_catalog(role, None, None, None, true, false),
    }
}

const N: bool = false;
const Y: bool = true;
const NONE: Option<Role> = None;
const USER: Option<Role> = Some(Role::User);
const DEV: Option<Role> = Some(Role::Developer);
const ADMIN: Option<Role> = Some(Role::Admin);

/// `(role, where, [show, scope, trigger, publish, approve])` on deployment shop/prod (publish:
/// a version of shop-app/app, the project's image prod subscribes to). Written out, not
/// computed.
const TABLE: &[(Option<Role>, Grant, [bool; 5])] = &[
    (NONE, Grant::ProjectRole, [N, N, N, N, N]),
    (USER, Grant::ProjectRole, [Y, Y, N, N, N]),
    (DEV, Grant::ProjectRole, [Y, Y, Y, Y, Y]),
    (ADMIN, Grant::ProjectRole, [Y, Y, Y, Y, Y]),
    (NONE, Grant::GroupOverride, [N, N, N, N, N]),
    (USER, Grant::GroupOverride, [Y, Y, N, N, N]),
    // A group developer is not a project developer: publishing is the project's.
    (DEV, Grant::GroupOverride, [Y, Y, Y, N, Y]),
    (ADMIN, Grant::GroupOverride, [Y, Y, Y, N, Y]),
    (NONE, Grant::DeploymentOverride, [N, N, N, N, N]),
    (USER, Grant::DeploymentOverride, [Y, Y, N, N, N]),
    (DEV, Grant::DeploymentOverride, [Y, Y, Y, N, Y]),
    (ADMIN, Grant::DeploymentOverride, [Y, Y, Y, N, Y]),
    // Catalog admins and the owner may everything, whatever their project role.
    (NONE, Grant::CatalogAdmin, [Y, Y, Y, Y, Y]),
    (USER, Grant::CatalogAdmin, [Y, Y, Y, Y, Y]),
    (DEV, Grant::CatalogAdmin, [Y, Y, Y, Y, Y]),
    (ADMIN, Grant::CatalogAdmin, [Y, Y, Y, Y, Y]),
    (NONE, Grant::Owner, [Y, Y, Y, Y, Y]),
    (USER, Grant::Owner, [Y, Y, Y, Y, Y]),
    (DEV, Grant::Owner, [Y, Y, Y, Y, Y]),
    (ADMIN, Grant::Owner, [Y, Y, Y, Y, Y]),
];

/// Every deployment `projects(user)` lists.
async fn listed(catalog: &Catalog, user: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for p in catalog.projects(user).await.unwrap() {
        for (_, d) in p.deployments() {
            out.insert(format!("{}/{}", p.slug, d.slug));
        }
    }
    out
}

/// A refusal names the user and the object, and their role there (or that they have none)
/// with the roles that would do.
fn assert_refusal(result: Result<(), CatalogError>, object: &str, role: Option<Role>, case: &str) {
    let err = match result {
        Err(e) if e.is_forbidden() => e.to_string(),
        other => panic!("{case}: expected a refusal, got {other:?}"),
    };
    assert!(err.starts_with("user \"u\" may not "), "{case}: {err}");
    assert!(err.contains(object), "{case}: {err}");
    let hint = match role {
        Some(r) => format!("their role there is {r} (needs role "),
        None => "they have no role there (needs role ".to_string(),
    };
    assert!(err.contains(&hint), "{case}: {err}");
}

#[tokio::test]
async fn role_times_grant_times_action_through_the_api() {
    let prod = dep("shop/prod");
    let target = Target::Deployment(prod.clone());
    for &(role, grant, [show, scope, trigger, publish, approve]) in TABLE {
        let case = format!("{role:?} as {grant:?}");
        // The role u has on prod, as a refusal shows it (the override or the project role).
        let role_on_prod = role;
        let fresh = || Catalog::in_memory(catalog_for(role, grant));

        // show
        let catalog = fresh();
        assert_eq!(
            listed(&catalog, "u").await.contains("shop/prod"),
            show,
            "{case}: show"
        );
        let project = catalog.project("u", &slug("shop")).await;
        assert_eq!(project.is_ok(), show, "{case}: project: {project:?}");
        if !show {
            assert_refusal(project.map(drop), "project shop", None, &case);
        }

        // scope
        let result = catalog.scope("u", &prod).await.map(drop);
        if scope {
            result.unwrap_or_else(|e| panic!("{case}: scope: {e}"));
        } else {
            assert_refusal(
                result,
                "read the scope of deployment shop/prod",
                role_on_prod,
                &case,
            );
        }

        // trigger
        let result = catalog
            .trigger("u", &prod, LifecycleAction::Deploy)
            .await
            .map(drop);
        if trigger {
            result.unwrap_or_else(|e| panic!("{case}: trigger: {e}"));
        } else {
            assert_refusal(
                result,
                "trigger actions on deployment shop/prod",
                role_on_prod,
                &case,
            );
        }

        // publish
        let result = catalog
            .publish_image("u", &slug("shop-app"), &slug("app"), "2.0.0")
            .await;
        match (&result, publish) {
            (Ok(requests), true) => {
                assert_eq!(requests.len(), 1, "{case}");
                assert_eq!(requests[0].deployment, prod, "{case}");
            }
            (_, true) => panic!("{case}: publish: {result:?}"),
            (_, false) => {
                // Refused on the repository with the user's role on the project.
                let on_project = match grant {
                    Grant::ProjectRole => role,
                    _ => None,
                };
                assert_refusal(
                    result.map(drop),
                    "publish images of repository shop-app",
                    on_project,
                    &case,
                );
                let data = catalog.store().load_catalog().await.unwrap().data;
                assert_eq!(
                    data.repository("shop-app").unwrap().images[0].versions,
                    ["1.0.0"],
                    "{case}: a refused publish records nothing"
                );
            }
        }

        // approve
        assert_eq!(
            catalog.may("u", Action::Approve, &target).await.unwrap(),
            approve,
            "{case}: approve"
        );
        let result = catalog.authorize("u", Action::Approve, &target).await;
        if approve {
            result.unwrap_or_else(|e| panic!("{case}: approve: {e}"));
        } else {
            assert_refusal(
                result,
                "approve manual steps on deployment shop/prod",
                role_on_prod,
                &case,
            );
        }
    }
    assert_eq!(TABLE.len(), 4 * 5, "every role × every grant");
}

#[tokio::test]
async fn a_shared_repository_is_published_by_catalog_admins_only() {
    // The owner of shop (admin there) may publish the project's image but not a shared one.
    let catalog = Catalog::in_memory(small_catalog(None, None, None, None, true, false));
    catalog
        .publish_image("u", &slug("shop-app"), &slug("app"), "2.0.0")
        .await
        .unwrap();
    let err = catalog
        .publish_image("u", &slug("tools"), &slug("cli"), "2.0.0")
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "user \"u\" may not publish images of repository tools: it belongs to no project, so \
         only catalog admins may"
    );
    catalog
        .publish_image("root", &slug("tools"), &slug("cli"), "2.0.0")
        .await
        .unwrap();
}

#[tokio::test]
async fn publishing_needs_trigger_on_every_subscriber() {
    // A project developer who is only a user on prod may not deploy prod by publishing.
    let catalog = Catalog::in_memory(small_catalog(DEV, None, USER, None, false, false));
    let err = catalog
        .publish_image("u", &slug("shop-app"), &slug("app"), "2.0.0")
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "user \"u\" may not trigger actions on deployment shop/prod, which subscribes to \
         shop-app/app: their role there is user (needs role developer or admin)"
    );
}

/// Every project, group and deployment of `data`, and its repositories and the catalog.
fn objects(data: &CatalogData) -> Vec<Target> {
    let mut out = vec![Target::Catalog];
    for p in &data.projects {
        out.push(Target::Project(p.slug.clone()));
        for g in &p.groups {
            out.push(Target::Group(p.slug.clone(), g.slug.clone()));
            for d in &g.deployments {
                out.push(Target::Deployment(DeploymentRef::new(
                    p.slug.clone(),
                    d.slug.clone(),
                )));
            }
        }
    }
    out.extend(
        data.repositories
            .iter()
            .map(|r| Target::Repository(r.slug.clone())),
    );
    out
}

/// What `projects(user)` shows, as targets.
async fn shown(catalog: &Catalog, user: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for p in catalog.projects(user).await.unwrap() {
        out.insert(Target::Project(p.slug.clone()).to_string());
        for g in &p.groups {
            out.insert(Target::Group(p.slug.clone(), g.slug.clone()).to_string());
            for d in &g.deployments {
                let r = DeploymentRef::new(p.slug.clone(), d.slug.clone());
                out.insert(Target::Deployment(r).to_string());
            }
        }
    }
    out
}

#[tokio::test]
async fn whoever_may_act_on_an_object_may_see_it_for_every_grant() {
    let grants = [NONE, USER, DEV, ADMIN];
    let mut combinations = 0;
    let mut allowed_somewhere = 0;
    for project in grants {
        for web in grants {
            for prod in grants {
                for main in grants {
                    for owner in [false, true] {
                        for admin in [false, true] {
                            let data = small_catalog(project, web, prod, main, owner, admin);
                            let case = format!(
                                "project {project:?} web {web:?} prod {prod:?} main {main:?} \
                                 owner {owner} admin {admin}"
                            );
                            let catalog = Catalog::in_memory(data.clone());
                            let shown = shown(&catalog, "u").await;
                            let mut visible = BTreeSet::new();
                            let mut any = false;
                            for object in objects(&data) {
                                let sees = catalog.may("u", Action::View, &object).await.unwrap();
                                if sees
                                    && !matches!(object, Target::Catalog | Target::Repository(_))
                                {
                                    visible.insert(object.to_string());
                                }
                                for action in Action::ALL {
                                    let may = catalog.may("u", action, &object).await.unwrap();
                                    any |= may;
                                    if may {
                                        assert!(
                                            sees,
                                            "{case}: may {action} {object} but not see it"
                                        );
                                    }
                                    // The API's checks are this one.
                                    let checked = catalog.authorize("u", action, &object).await;
                                    assert_eq!(checked.is_ok(), may, "{case}: {action} {object}");
                                }
                                // A visible deployment's group and project are visible too.
                                if let (Target::Deployment(r), true) = (&object, sees) {
                                    let (_, g, _) = data.deployment(r).unwrap();
                                    let group = Target::Group(r.project.clone(), g.slug.clone());
                                    assert!(data.may("u", Action::View, &group), "{case}: {group}");
                                }
                                // scope and trigger through the API agree with the matrix.
                                if let Target::Deployment(r) = &object {
                                    let scope = catalog.scope("u", r).await;
                                    assert_eq!(
                                        scope.is_ok(),
                                        data.may("u", Action::Scope, &object),
                                        "{case}: scope {r}"
                                    );
                                    let trigger =
                                        catalog.trigger("u", r, LifecycleAction::Deploy).await;
                                    assert_eq!(
                                        trigger.is_ok(),
                                        data.may("u", Action::Trigger, &object),
                                        "{case}: trigger {r}: {trigger:?}"
                                    );
                                }
                            }
                            // show lists exactly what the user may see.
                            assert_eq!(shown, visible, "{case}");
                            let nothing = project.is_none()
                                && web.is_none()
                                && prod.is_none()
                                && main.is_none()
                                && !owner
                                && !admin;
                            // A user with nothing sees nothing and may do nothing.
                            assert_eq!(nothing, !any, "{case}");
                            assert_eq!(nothing, shown.is_empty(), "{case}");
                            allowed_somewhere += usize::from(any);
                            combinations += 1;
                        }
                    }
                }
            }
        }
    }
    assert_eq!(combinations, 4 * 4 * 4 * 4 * 2 * 2);
    assert_eq!(allowed_somewhere, combinations - 1);
}

#[tokio::test]
async fn a_group_override_shows_the_project_with_that_group_only() {
    // carol's case: a developer override on group web, no project role.
    let catalog = Catalog::in_memory(small_catalog(None, DEV, None, None, false, false));
    let shown = shown(&catalog, "u").await;
    assert_eq!(
        shown.into_iter().collect::<Vec<_>>(),
        [
            "deployment shop/prod",
            "deployment shop/staging",
            "group shop/web",
            "project shop"
        ]
    );
    let project = catalog.project("u", &slug("shop")).await.unwrap();
    assert_eq!(project.groups.len(), 1, "not group db");
    catalog
        .trigger("u", &dep("shop/staging"), LifecycleAction::Deploy)
        .await
        .unwrap();
    let err = catalog
        .trigger("u", &dep("shop/main"), LifecycleAction::Deploy)
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "user \"u\" may not trigger actions on deployment shop/main: they have no role there \
         (needs role developer or admin)"
    );
    let err = catalog
        .create_group(
            "u",
            &slug("shop"),
            DeploymentGroup::new(slug("api"), "rust"),
        )
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "user \"u\" may not manage the project on project shop: they have no role there \
         (needs role admin)"
    );
    // The effective role the API reports is the same rule's.
    let web = Target::Group(slug("shop"), slug("web"));
    assert_eq!(catalog.effective_role("u", &web).await.unwrap(), DEV);
    let shop = Target::Project(slug("shop"));
    assert_eq!(catalog.effective_role("u", &shop).await.unwrap(), None);
    let err = catalog
        .effective_role("u", &Target::Group(slug("shop"), slug("nope")))
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "no deployment group \"shop/nope\"");
}

#[tokio::test]
async fn a_deployment_override_shows_only_that_deployment() {
    let catalog = Catalog::in_memory(small_catalog(None, None, None, USER, false, false));
    let shown = shown(&catalog, "u").await;
    assert_eq!(
        shown.into_iter().collect::<Vec<_>>(),
        ["deployment shop/main", "group shop/db", "project shop"]
    );
    // It may read main but not act on it, and may not see web at all.
    catalog.scope("u", &dep("shop/main")).await.unwrap();
    let err = catalog.scope("u", &dep("shop/prod")).await.unwrap_err();
    assert!(err.is_forbidden(), "{err}");
}

#[tokio::test]
async fn the_owner_is_admin_of_the_project_whatever_the_overrides() {
    // An override naming the owner does not lower them.
    let catalog = Catalog::in_memory(small_catalog(USER, USER, USER, USER, true, false));
    let prod = Target::Deployment(dep("shop/prod"));
    assert_eq!(catalog.effective_role("u", &prod).await.unwrap(), ADMIN);
    catalog
        .set_project_role("u", &slug("shop"), "frank", Some(Role::Developer))
        .await
        .unwrap();
    // Catalog-level objects stay the catalog admins'.
    assert!(
        !catalog
            .may("u", Action::ManageCatalog, &Target::Catalog)
            .await
            .unwrap()
    );
    let err = catalog
        .create_project("u", Project::new(slug("wiki"), "u"))
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "user \"u\" may not manage the catalog (projects and shared objects): only catalog admins may"
    );
}

#[tokio::test]
async fn only_the_owner_or_a_catalog_admin_hands_a_project_over() {
    // u is a project admin, olga the owner.
    let catalog = Catalog::in_memory(small_catalog(ADMIN, None, None, None, false, false));
    let shop = slug("shop");
    let err = catalog
        .edit_project("u", &shop, |p| p.owner = "u".to_string())
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "project shop: owner: user \"u\" may not change it: only the owner (olga) or a \
         catalog admin may"
    );
    // Other changes a project admin may make.
    catalog
        .edit_project("u", &shop, |p| p.name = "The Shop".to_string())
        .await
        .unwrap();
    catalog
        .edit_project("olga", &shop, |p| p.owner = "u".to_string())
        .await
        .unwrap();
    let project = catalog.project("u", &shop).await.unwrap();
    assert_eq!(
        (project.owner.as_str(), project.name.as_str()),
        ("u", "The Shop")
    );
    catalog
        .edit_project("root", &shop, |p| p.owner = "olga".to_string())
        .await
        .unwrap();
}
