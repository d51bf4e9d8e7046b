//! Identities other than admin, with exactly the RBAC a test grants, so missing rules show up
//! as 403s in tests instead of in production.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::authorization::v1::{
    NonResourceAttributes, ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{
    ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, RoleRef, Subject,
};
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};

use super::control_plane::{
    ControlPlane, Credential, FIELD_MANAGER, kubeconfig, load_kubeconfig, write,
};

/// A user the apiserver authenticates, with its own kubeconfig.
#[derive(Clone)]
pub struct Identity {
    /// The user name the apiserver sees (`system:serviceaccount:<ns>:<name>` for a ServiceAccount).
    pub username: String,
    pub groups: Vec<String>,
    /// The RBAC subject to bind roles to.
    pub subject: Subject,
    kubeconfig: PathBuf,
    config: kube::Config,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("username", &self.username)
            .field("kubeconfig", &self.kubeconfig)
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// A new client acting as this identity (make one per test runtime).
    pub fn client(&self) -> anyhow::Result<kube::Client> {
        kube::Client::try_from(self.config.clone())
            .with_context(|| format!("building a kube client for {}", self.username))
    }

    /// A kubeconfig for processes under test.
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }
}

impl ControlPlane {
    /// A user authenticated by a client certificate (CN = `name`, O = `group`). It has no
    /// permissions beyond `system:authenticated` until granted some.
    pub async fn user(&self, name: &str, group: Option<&str>) -> anyhow::Result<Identity> {
        let groups: Vec<&str> = group.into_iter().collect();
        let pair = self.ca().client(name, &groups)?;
        let file = self.unique_name(&format!("user-{name}"));
        let cert = self.dir().join(format!("{file}.crt"));
        let key = self.dir().join(format!("{file}.key"));
        write(&cert, &pair.cert_pem)?;
        write(&key, &pair.key_pem)?;
        let path = self.dir().join(format!("{file}.kubeconfig"));
        let cred = Credential::ClientCert {
            cert: &cert,
            key: &key,
        };
        write(
            &path,
            &kubeconfig(&self.server, &self.ca_cert_path(), &cred),
        )?;
        let mut all_groups: Vec<String> = groups.iter().map(|g| (*g).to_owned()).collect();
        all_groups.push("system:authenticated".to_owned());
        Ok(Identity {
            username: name.to_owned(),
            groups: all_groups,
            subject: Subject {
                kind: "User".to_owned(),
                api_group: Some("rbac.authorization.k8s.io".to_owned()),
                name: name.to_owned(),
                namespace: None,
            },
            config: load_kubeconfig(&path).await?,
            kubeconfig: path,
        })
    }

    /// A ServiceAccount `namespace/name` (created if missing) and a bound token for it from the
    /// TokenRequest API, valid for a day.
    pub async fn service_account(&self, namespace: &str, name: &str) -> anyhow::Result<Identity> {
        let api: Api<ServiceAccount> = Api::namespaced(self.client()?, namespace);
        let sa = ServiceAccount {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                ..ObjectMeta::default()
            },
            ..ServiceAccount::default()
        };
        api.patch(
            name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&sa),
        )
        .await
        .with_context(|| format!("creating ServiceAccount {namespace}/{name}"))?;
        let request = TokenRequest {
            spec: Some(TokenRequestSpec {
                expiration_seconds: Some(24 * 3600),
                ..TokenRequestSpec::default()
            }),
            ..TokenRequest::default()
        };
        let token = api
            .create_token_request(name, &PostParams::default(), &request)
            .await
            .with_context(|| format!("requesting a token for ServiceAccount {namespace}/{name}"))?
            .status
            .and_then(|s| s.token)
            .filter(|t| !t.is_empty())
            .with_context(|| format!("TokenRequest for {namespace}/{name} returned no token"))?;
        let path = self.dir().join(format!(
            "{}.kubeconfig",
            self.unique_name(&format!("sa-{namespace}-{name}"))
        ));
        write(
            &path,
            &kubeconfig(
                &self.server,
                &self.ca_cert_path(),
                &Credential::Token(&token),
            ),
        )?;
        Ok(Identity {
            username: format!("system:serviceaccount:{namespace}:{name}"),
            groups: vec![
                "system:serviceaccounts".to_owned(),
                format!("system:serviceaccounts:{namespace}"),
                "system:authenticated".to_owned(),
            ],
            subject: Subject {
                kind: "ServiceAccount".to_owned(),
                api_group: None,
                name: name.to_owned(),
                namespace: Some(namespace.to_owned()),
            },
            config: load_kubeconfig(&path).await?,
            kubeconfig: path,
        })
    }

    /// Grants `rules` to `who`: a Role + RoleBinding in `namespace`, or a ClusterRole +
    /// ClusterRoleBinding when `namespace` is None. Returns once the authorizer allows the first
    /// verb on the first resource of every rule (RBAC changes take a moment to apply).
    pub async fn grant(
        &self,
        who: &Identity,
        namespace: Option<&str>,
        rules: Vec<PolicyRule>,
    ) -> anyhow::Result<()> {
        let client = self.client()?;
        let name = self.unique_name(&format!("test-{}", who.subject.name));
        let pp = PatchParams::apply(FIELD_MANAGER).force();
        let meta = ObjectMeta {
            name: Some(name.clone()),
            namespace: namespace.map(str::to_owned),
            ..ObjectMeta::default()
        };
        match namespace {
            Some(ns) => {
                let role = Role {
                    metadata: meta.clone(),
                    rules: Some(rules.clone()),
                };
                Api::<Role>::namespaced(client.clone(), ns)
                    .patch(&name, &pp, &Patch::Apply(&role))
                    .await
                    .with_context(|| format!("creating Role {ns}/{name}"))?;
            }
            None => {
                let role = ClusterRole {
                    metadata: meta.clone(),
                    rules: Some(rules.clone()),
                    ..ClusterRole::default()
                };
                Api::<ClusterRole>::all(client.clone())
                    .patch(&name, &pp, &Patch::Apply(&role))
                    .await
                    .with_context(|| format!("creating ClusterRole {name}"))?;
            }
        }
        let kind = if namespace.is_some() {
            "Role"
        } else {
            "ClusterRole"
        };
        self.bind(who, namespace, kind, &name).await?;
        for rule in &rules {
            self.wait_allowed(who, namespace, rule).await?;
        }
        Ok(())
    }

    /// Binds an existing ClusterRole (e.g. the one the Helm chart ships) to `who`, cluster-wide
    /// or in `namespace`.
    pub async fn bind_cluster_role(
        &self,
        who: &Identity,
        namespace: Option<&str>,
        cluster_role: &str,
    ) -> anyhow::Result<()> {
        self.bind(who, namespace, "ClusterRole", cluster_role).await
    }

    async fn bind(
        &self,
        who: &Identity,
        namespace: Option<&str>,
        role_kind: &str,
        role_name: &str,
    ) -> anyhow::Result<()> {
        let client = self.client()?;
        let name = self.unique_name(&format!("test-{}", who.subject.name));
        let pp = PatchParams::apply(FIELD_MANAGER).force();
        let meta = ObjectMeta {
            name: Some(name.clone()),
            namespace: namespace.map(str::to_owned),
            ..ObjectMeta::default()
        };
        let role_ref = RoleRef {
            api_group: Some("rbac.authorization.k8s.io".to_owned()),
            kind: role_kind.to_owned(),
            name: role_name.to_owned(),
        };
        let subjects = Some(vec![who.subject.clone()]);
        match namespace {
            Some(ns) => {
                let binding = RoleBinding {
                    metadata: meta,
                    role_ref,
                    subjects,
                };
                Api::<RoleBinding>::namespaced(client, ns)
                    .patch(&name, &pp, &Patch::Apply(&binding))
                    .await
                    .with_context(|| format!("creating RoleBinding {ns}/{name}"))?;
            }
            None => {
                let binding = ClusterRoleBinding {
                    metadata: meta,
                    role_ref,
                    subjects,
                };
                Api::<ClusterRoleBinding>::all(client)
                    .patch(&name, &pp, &Patch::Apply(&binding))
                    .await
                    .with_context(|| format!("creating ClusterRoleBinding {name}"))?;
            }
        }
        Ok(())
    }

    /// Waits (up to 10 s) until a SubjectAccessReview allows `who` the first verb of `rule` on
    /// its first resource (or non-resource URL).
    async fn wait_allowed(
        &self,
        who: &Identity,
        namespace: Option<&str>,
        rule: &PolicyRule,
    ) -> anyhow::Result<()> {
        let Some(verb) = rule.verbs.first() else {
            return Ok(());
        };
        let first = |v: &Option<Vec<String>>| v.as_ref().and_then(|v| v.first()).cloned();
        let mut spec = SubjectAccessReviewSpec {
            user: Some(who.username.clone()),
            groups: Some(who.groups.clone()),
            ..SubjectAccessReviewSpec::default()
        };
        if let Some(path) = first(&rule.non_resource_urls) {
            spec.non_resource_attributes = Some(NonResourceAttributes {
                path: Some(path),
                verb: Some(verb.clone()),
            });
        } else {
            spec.resource_attributes = Some(ResourceAttributes {
                namespace: namespace.map(str::to_owned),
                verb: Some(verb.clone()),
                group: first(&rule.api_groups).filter(|g| g != "*"),
                resource: first(&rule.resources).filter(|r| r != "*"),
                name: first(&rule.resource_names),
                ..ResourceAttributes::default()
            });
        }
        let review = SubjectAccessReview {
            spec,
            ..SubjectAccessReview::default()
        };
        let api: Api<SubjectAccessReview> = Api::all(self.client()?);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let answer = api
                .create(&PostParams::default(), &review)
                .await
                .context("creating a SubjectAccessReview")?;
            if answer.status.is_some_and(|s| s.allowed) {
                return Ok(());
            }
            if Instant::now() > deadline {
                anyhow::bail!(
                    "RBAC still denies {} `{verb}` on {:?} 10 s after granting it",
                    who.username,
                    review.spec.resource_attributes
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
