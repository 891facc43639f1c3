//! Enhanced authentication on a connection: the AUTH exchange during CONNECT and
//! re-authentication afterwards, both driven by the configured [`Authenticator`].
//!
//! [`Authenticator`]: crate::auth::Authenticator

use std::mem;

use paho_packets::{
    Auth, AuthReasonCode, Connect, ConnectReasonCode, DisconnectReasonCode, MqttString, Packet,
};

use super::{Conn, Phase};
use crate::auth::{AuthOutcome, AuthRequest};

impl Conn {
    pub(super) fn on_connect_auth(&mut self, a: Auth) {
        let Phase::Authenticating {
            connect,
            method,
            step,
        } = mem::replace(&mut self.phase, Phase::AwaitConnect)
        else {
            return;
        };
        if a.reason_code != AuthReasonCode::ContinueAuthentication
            || a.properties.authentication_method.as_deref() != Some(method.as_str())
        {
            return self.refuse(ConnectReasonCode::ProtocolError);
        }
        let Some(auth) = self.config.authenticator.clone() else {
            return self.refuse(ConnectReasonCode::BadAuthenticationMethod);
        };
        let outcome = auth.authenticate(&AuthRequest {
            client_id: connect.client_id.as_str(),
            method: &method,
            data: a.properties.authentication_data.as_ref(),
            step,
            reauthenticate: false,
        });
        self.connect_auth_outcome(connect, method, step, outcome);
    }

    pub(super) fn connect_auth_outcome(
        &mut self,
        connect: Box<Connect>,
        method: String,
        step: u32,
        outcome: AuthOutcome,
    ) {
        match outcome {
            AuthOutcome::Continue(data) => {
                self.replies.push(auth_packet(
                    AuthReasonCode::ContinueAuthentication,
                    &method,
                    Some(data),
                ));
                self.phase = Phase::Authenticating {
                    connect,
                    method,
                    step: step + 1,
                };
            }
            AuthOutcome::Success(data) => self.accept(*connect, Some((method, data))),
            AuthOutcome::Fail => self.refuse(ConnectReasonCode::NotAuthorized),
            AuthOutcome::BadMethod => self.refuse(ConnectReasonCode::BadAuthenticationMethod),
        }
    }

    pub(super) fn on_reauth(&mut self, client_id: &str, a: Auth) {
        let method_ok = a.properties.authentication_method.as_deref()
            == self.auth_method.as_deref()
            && self.auth_method.is_some();
        let step = match (a.reason_code, self.reauth_step) {
            (AuthReasonCode::ReAuthenticate, None) => 0,
            (AuthReasonCode::ContinueAuthentication, Some(step)) => step,
            _ => return self.server_disconnect(DisconnectReasonCode::ProtocolError),
        };
        let (Some(auth), true) = (self.config.authenticator.clone(), method_ok) else {
            return self.server_disconnect(DisconnectReasonCode::ProtocolError);
        };
        let method = self.auth_method.clone().unwrap_or_default();
        let outcome = auth.authenticate(&AuthRequest {
            client_id,
            method: &method,
            data: a.properties.authentication_data.as_ref(),
            step,
            reauthenticate: true,
        });
        match outcome {
            AuthOutcome::Continue(data) => {
                self.reauth_step = Some(step + 1);
                self.replies.push(auth_packet(
                    AuthReasonCode::ContinueAuthentication,
                    &method,
                    Some(data),
                ));
            }
            AuthOutcome::Success(data) => {
                self.reauth_step = None;
                self.replies
                    .push(auth_packet(AuthReasonCode::Success, &method, data));
            }
            AuthOutcome::Fail => self.server_disconnect(DisconnectReasonCode::NotAuthorized),
            AuthOutcome::BadMethod => {
                self.server_disconnect(DisconnectReasonCode::ImplementationSpecificError)
            }
        }
    }
}

fn auth_packet(code: AuthReasonCode, method: &str, data: Option<bytes::Bytes>) -> Packet {
    let mut auth = Auth::new(code);
    auth.properties.authentication_method = Some(MqttString::from(method));
    auth.properties.authentication_data = data;
    Packet::Auth(auth)
}
